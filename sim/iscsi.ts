/**
 * The simulator's own tgtd: one per simulator, on a loopback address of its own (so simulators run in parallel),
 * exporting volume-group disks (frozen snapshot files) as read-only iSCSI LUNs.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
export const ISCSI_PORT = 3260;
export const NUTANIX_IQN_PREFIX = 'iqn.2010-06.com.nutanix:';
/** tgtadm refuses a control port above 32767 ("-C argument value … out of range"), so tgtd would never answer. */
export const TGTD_CONTROL_PORTS = { min: 20000, max: 32767 } as const;

function portFree(ip: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, ip, () => server.close(() => resolve(true)));
  });
}

export interface IscsiTarget {
  tid: number;
  iqn: string;
  luns: string[];
  initiators: string[];
}

export class Tgtd {
  readonly ip: string;
  private readonly controlPort: number;
  private readonly child: ChildProcess;
  private readonly targets = new Map<string, IscsiTarget>();
  private nextTid = 1;
  /** tgtadm calls are serialised: tgtd's control channel handles one at a time. */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(ip: string, controlPort: number, child: ChildProcess) {
    this.ip = ip;
    this.controlPort = controlPort;
    this.child = child;
  }

  /** Picks a free 127.x.y.z:3260 and control port, starts `tgtd -f` and waits until it answers. */
  static async start(): Promise<Tgtd> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const ip = `127.${randomInt(1, 255)}.${randomInt(0, 256)}.${randomInt(2, 255)}`;
      const controlPort = randomInt(TGTD_CONTROL_PORTS.min, TGTD_CONTROL_PORTS.max + 1);
      if (existsSync(`/var/run/tgtd/socket.${controlPort}`) || !(await portFree(ip, ISCSI_PORT))) continue;
      // setpriv --pdeathsig: a simulator killed without its cleanup still takes its tgtd with it.
      const child = spawn('setpriv', ['--pdeathsig', 'KILL', 'tgtd', '-f', '--iscsi', `portal=${ip}:${ISCSI_PORT}`, '-C', String(controlPort)], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const tgtd = new Tgtd(ip, controlPort, child);
      for (let i = 0; i < 100 && child.exitCode === null; i++) {
        try {
          await tgtd.admin(['--op', 'show', '--mode', 'target']);
          return tgtd;
        } catch {
          await sleep(50);
        }
      }
      child.kill('SIGKILL');
      if (attempt === 19) throw new Error(`tgtd did not start: ${stderr.trim()}`);
    }
    throw new Error('no free loopback address for tgtd');
  }

  private admin(args: string[]): Promise<string> {
    const run = this.queue.then(async () => {
      const { stdout } = await execFileAsync('tgtadm', ['-C', String(this.controlPort), '--lld', 'iscsi', ...args]);
      return stdout;
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  list(): IscsiTarget[] {
    return [...this.targets.values()].map((t) => ({ ...t, luns: [...t.luns], initiators: [...t.initiators] }));
  }

  /**
   * Creates or updates the target `iqn` so it exports exactly `luns` (LUN 1, 2, …, read-only) to `initiators`
   * (`ALL` = any initiator).
   */
  async export(iqn: string, luns: string[], initiators: string[]): Promise<IscsiTarget> {
    let target = this.targets.get(iqn);
    if (!target) {
      target = { tid: this.nextTid++, iqn, luns: [], initiators: [] };
      await this.admin(['--op', 'new', '--mode', 'target', '--tid', String(target.tid), '-T', iqn]);
      this.targets.set(iqn, target);
    }
    for (const [i, path] of luns.entries()) {
      if (target.luns[i] === path) continue;
      const lun = String(i + 1);
      await this.admin(['--op', 'new', '--mode', 'logicalunit', '--tid', String(target.tid), '--lun', lun, '-b', path]);
      await this.admin(['--op', 'update', '--mode', 'logicalunit', '--tid', String(target.tid), '--lun', lun, '--params', 'readonly=1']);
      target.luns[i] = path;
    }
    for (const initiator of initiators) {
      if (target.initiators.includes(initiator)) continue;
      const who = initiator === 'ALL' ? ['-I', 'ALL'] : ['--initiator-name', initiator];
      await this.admin(['--op', 'bind', '--mode', 'target', '--tid', String(target.tid), ...who]);
      target.initiators.push(initiator);
    }
    for (const initiator of target.initiators.filter((i) => !initiators.includes(i))) {
      const who = initiator === 'ALL' ? ['-I', 'ALL'] : ['--initiator-name', initiator];
      await this.admin(['--op', 'unbind', '--mode', 'target', '--tid', String(target.tid), ...who]);
      target.initiators = target.initiators.filter((i) => i !== initiator);
    }
    return target;
  }

  async remove(iqn: string): Promise<void> {
    const target = this.targets.get(iqn);
    if (!target) return;
    await this.admin(['--op', 'delete', '--mode', 'target', '--tid', String(target.tid), '--force']);
    this.targets.delete(iqn);
  }

  async stop(): Promise<void> {
    for (const iqn of [...this.targets.keys()]) await this.remove(iqn).catch(() => undefined);
    if (this.child.exitCode === null) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      // tgtd ignores SIGTERM; the management call is its orderly shutdown.
      await execFileAsync('tgtadm', ['-C', String(this.controlPort), '--op', 'delete', '--mode', 'system']).catch(() => this.child.kill('SIGKILL'));
      await Promise.race([exited, sleep(3000).then(() => this.child.kill('SIGKILL'))]);
    }
    // tgtd leaves its control socket behind.
    await rm(`/var/run/tgtd/socket.${this.controlPort}`, { force: true });
    await rm(`/var/run/tgtd/socket.${this.controlPort}.lock`, { force: true });
  }
}
