/**
 * What the benchmarks share: timing with the CPU seconds of every process involved, the peer copy tools
 * (qemu-img convert, nbdcopy into a qemu-nbd qcow2 target, dd oflag=direct) and machine facts. Each peer makes
 * its output durable inside the timed section, as our mover does at commit. No contender deletes its previous
 * output inside the timing: freeing a file of a few GiB takes ext4 about half a second here, work that belongs to
 * no copy (see `timed`'s `before`).
 */
import { execFile, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { z } from 'zod';
import { QEMU_NBD_MALLOC_ENV } from '../src/nbd/qemu-nbd.ts';

const execFileAsync = promisify(execFile);
export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;

export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** /proc/PID/stat fields in seconds: [utime + stime, reaped children's cutime + cstime]; undefined once exited. */
function cpuFields(pid: number): [number, number] | undefined {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    const seconds = (i: number, j: number) => (Number(fields[i]) + Number(fields[j])) / 100; // USER_HZ is 100 on Linux
    return [seconds(11, 12), seconds(13, 14)];
  } catch {
    return undefined; // exited between listing and reading: its time is now in its parent's reaped-children fields
  }
}

function childrenOf(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).flatMap((tid) =>
      readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8')
        .split(' ')
        .filter(Boolean)
        .map(Number),
    );
  } catch {
    return [];
  }
}

/** Who spent the CPU: this process itself, the tools it ran and reaped, and each live descendant by name. */
export const CpuOwner = { InProcess: 'in-process (mover, engine, Prism client)', ReapedTools: 'reaped children (qemu-nbd of backups, qemu-img, nbdcopy, dd)' } as const;

/**
 * CPU seconds of this process tree, by owner: live descendants are named by their command (tgtd, qemu-nbd, the
 * simulator's node) and include what their own reaped children used. On a busy host CPU cost is steadier than
 * wall time, so it is reported beside it.
 */
export function treeCpu(root = process.pid): Record<string, number> {
  const [own, reaped] = cpuFields(root) ?? [0, 0];
  const byOwner: Record<string, number> = { [CpuOwner.InProcess]: own, [CpuOwner.ReapedTools]: reaped };
  const pending = childrenOf(root);
  while (pending.length) {
    const pid = pending.pop()!;
    const fields = cpuFields(pid);
    if (fields) {
      let name = 'exited';
      try {
        name = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      } catch {
        // exited just now; its seconds were read above
      }
      if (name === 'node' || name === 'MainThread') name = 'simulator (node)'; // Node names its main thread
      byOwner[name] = (byOwner[name] ?? 0) + fields[0] + fields[1];
    }
    pending.push(...childrenOf(pid));
  }
  return byOwner;
}

export interface Timing {
  seconds: number;
  cpuSeconds: number;
  cpuByOwner: Record<string, number>;
}

/**
 * Wall and CPU seconds of fn. `before` runs untimed first (e.g. removing the previous round's output); then dirty
 * pages of earlier steps are written back so that no contender pays for its predecessor. CPU covers this process
 * tree (the simulator, its tgtd, qemu-nbd and every tool run).
 */
export async function timed(fn: () => Promise<unknown>, before?: () => Promise<unknown>): Promise<Timing> {
  await before?.();
  await execFileAsync('sync');
  const cpuBefore = treeCpu();
  const t0 = performance.now();
  await fn();
  const seconds = (performance.now() - t0) / 1000;
  const after = treeCpu();
  // A process that exits inside fn moves its seconds to its parent's reaped fields: only the sum is exact then.
  const cpuByOwner = Object.fromEntries(Object.entries(after).map(([owner, s]) => [owner, Number((s - (cpuBefore[owner] ?? 0)).toFixed(2))]));
  const cpuSeconds = Object.values(after).reduce((n, x) => n + x, 0) - Object.values(cpuBefore).reduce((n, x) => n + x, 0);
  return { seconds, cpuSeconds, cpuByOwner };
}

/** Runs a tool to completion; a non-zero exit rejects with its stderr. */
/** posix_fadvise(DONTNEED) through dd: only these files leave the page cache, so a read measures the disk. */
export async function dropFromPageCache(files: readonly string[]): Promise<void> {
  for (const file of files) await sh('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
}

export async function sh(cmd: string, argv: string[], env?: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${argv.join(' ')} → ${code}: ${err.trim()}`))));
  });
}

export const nbdUri = (socketPath: string): string => `nbd+unix:///?socket=${socketPath}`;

/**
 * `qemu-img convert -W -m 2` from the NBD export into a qcow2 `out` (which must not exist), then the file synced
 * (convert's default cache ignores flushes).
 */
export async function qemuImgConvert(sourceSocket: string, out: string, extra: string[] = []): Promise<void> {
  await sh('qemu-img', ['convert', '-W', '-m', '2', ...extra, '-f', 'raw', '-O', 'qcow2', nbdUri(sourceSocket), out]);
  await sh('sync', ['-d', out]);
}

/**
 * nbdcopy cannot write qcow2 itself: the target is a writable qemu-nbd over a fresh qcow2 `out` (which must not
 * exist; with our glibc allocator thresholds, which help it too), and `--flush` makes qemu-nbd fsync it at the end.
 */
export async function nbdcopyToQcow2(sourceSocket: string, out: string, sizeBytes: number, scratchDir: string): Promise<void> {
  await sh('qemu-img', ['create', '-q', '-f', 'qcow2', out, String(sizeBytes)]);
  const target = path.join(scratchDir, 'nbdcopy-target.sock');
  await rm(target, { force: true });
  const server = spawn('qemu-nbd', ['-f', 'qcow2', '-t', '-e', '4', `--socket=${target}`, out], { stdio: 'ignore', env: { ...process.env, ...QEMU_NBD_MALLOC_ENV } });
  const exited = new Promise((resolve) => server.once('exit', resolve));
  try {
    for (let i = 0; i < 1000 && !(await stat(target).then(() => true, () => false)); i++) await sleep(10);
    await sh('nbdcopy', ['-C', '1', '-R', '4', '--request-size=1048576', '--destination-is-zero', '--flush', nbdUri(sourceSocket), nbdUri(target)]);
  } finally {
    server.kill('SIGTERM');
    await exited;
    await rm(target, { force: true });
  }
}

/**
 * `dd oflag=direct` of `bytes` (rounded up to 4 MiB) into `file` (which must not exist) plus fsync: the disk's durable
 * write limit for that much data.
 */
export async function ddDirect(file: string, bytes: number): Promise<void> {
  await sh('dd', ['if=/dev/zero', `of=${file}`, 'bs=4M', `count=${Math.ceil(bytes / (4 * MiB))}`, 'oflag=direct', 'conv=fsync', 'status=none']);
}

const FindmntSchema = z.object({ filesystems: z.array(z.object({ source: z.string(), fstype: z.string() })).min(1) });

/** nproc, memory, kernel, qemu version, the filesystem and device under `dir`. */
export async function machineFacts(dir: string) {
  const qemu = (await sh('qemu-img', ['--version'])).split('\n')[0] ?? '';
  const fs = FindmntSchema.parse(JSON.parse(await sh('findmnt', ['-J', '-o', 'SOURCE,FSTYPE', '-T', dir]))).filesystems[0]!;
  const device = path.basename(fs.source);
  const rotational = await sh('cat', [`/sys/block/${device}/queue/rotational`]).then((s) => s.trim() === '1', () => undefined);
  return {
    nproc: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryGiB: Number((os.totalmem() / GiB).toFixed(1)),
    kernel: `${os.type()} ${os.release()}`,
    qemu,
    node: process.version,
    disk: { dir, device: fs.source, fstype: fs.fstype, rotational },
  };
}

/** Samples the 1-minute load average every few seconds while a run lasts (other processes share the machine). */
export function sampleLoad(everyMs = 5000): { stop(): { min: number; median: number; max: number; samples: number } } {
  const samples: number[] = [os.loadavg()[0]!];
  const timer = setInterval(() => samples.push(os.loadavg()[0]!), everyMs);
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      samples.push(os.loadavg()[0]!);
      const round = (x: number) => Number(x.toFixed(1));
      return { min: round(Math.min(...samples)), median: round(median(samples)), max: round(Math.max(...samples)), samples: samples.length };
    },
  };
}
