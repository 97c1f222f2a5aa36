/**
 * Starts the Prism simulator (`bin/sendense-nutanix sim`) as a child process on a free port with a temp data dir,
 * for tests. `stop()` sends SIGTERM (the sim removes its iSCSI targets and stops its tgtd) and deletes the dir.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { adminCall, simInfoSchema } from '../../sim/admin-client.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const bin = join(root, 'bin/sendense-nutanix');

export interface SimOptions {
  vms?: number;
  disksPerVm?: number;
  /** e.g. '16MiB' (default 16MiB: tests keep disks small). */
  diskSize?: string;
  seed?: number;
  api?: 'v3' | 'v4';
  /** e.g. '2s'. */
  sessionTtl?: string;
  clusters?: number;
  crtPageRegions?: number;
  taskDuration?: string;
  faults?: FaultRule[];
  iscsi?: boolean;
  iscsiAcl?: 'initiator' | 'any';
  /** Reuse a data dir (e.g. to test restarts); it is then not deleted by stop(). */
  dataDir?: string;
  listenIp?: string;
}

export interface FaultRule {
  kind: 'rateLimit' | 'unavailable' | 'latency' | 'drop' | 'taskFail' | 'taskHang';
  match?: { method?: string; path?: string };
  count?: number;
  ms?: number;
  retryAfterSeconds?: number;
  message?: string;
}

export interface NgtSettings {
  installed?: boolean;
  enabled?: boolean;
  reachable?: boolean;
  vssCapable?: boolean;
  mode?: 'succeed' | 'refuse' | 'downgrade';
}

const writeReportSchema = z.object({
  generation: z.number(),
  blocks: z.array(z.object({ offset: z.number(), length: z.number(), zero: z.boolean() })),
});
export type WriteReport = z.infer<typeof writeReportSchema>;

const stateSchema = z.object({
  vms: z.number(),
  recoveryPoints: z.array(z.object({ extId: z.string(), name: z.string(), state: z.string(), vmExtIds: z.array(z.string()), types: z.array(z.string()) })),
  vmSnapshots: z.array(z.object({ uuid: z.string(), name: z.string(), state: z.string(), vmUuid: z.string().optional(), types: z.array(z.string()) })),
  volumeGroups: z.array(z.object({ extId: z.string(), name: z.string(), iqn: z.string(), attachedInitiators: z.array(z.string()), disks: z.number() })),
  iscsiTargets: z.array(z.object({ tid: z.number(), iqn: z.string(), luns: z.array(z.string()), initiators: z.array(z.string()) })),
  tasks: z.object({ total: z.number(), unfinished: z.number() }),
  sessions: z.number(),
  dataServicesIp: z.string().optional(),
});
export type SimStateSummary = z.infer<typeof stateSchema>;

const countersSchema = z.object({ total: z.number(), byRoute: z.record(z.string(), z.number()) });
export type SimCounters = z.infer<typeof countersSchema>;

export interface SimAdmin {
  state(): Promise<SimStateSummary>;
  counters(): Promise<SimCounters>;
  resetCounters(): Promise<void>;
  addFaults(rules: FaultRule[]): Promise<void>;
  clearFaults(): Promise<void>;
  expireSessions(): Promise<void>;
  setNgt(vmName: string, ngt: NgtSettings): Promise<void>;
  write(vmName: string, diskIndex: number, changedPercent: number, seed?: number): Promise<WriteReport>;
  resize(vmName: string, diskIndex: number, sizeBytes: number): Promise<void>;
  /** Resolves once deleted snapshots' files are freed and the state is saved. */
  settle(): Promise<void>;
}

export interface RunningSim {
  endpoint: string;
  username: string;
  password: string;
  viewerUsername: string;
  caFile: string;
  caPem: string;
  dataDir: string;
  /** The sim's tgtd address (port 3260), also reported as the clusters' data services IP. */
  dataServicesIp?: string;
  admin: SimAdmin;
  diskPath(vmName: string, diskIndex: number): Promise<string>;
  stop(): Promise<void>;
}

function argsFor(dataDir: string, options: SimOptions): string[] {
  const args = ['sim', '--data', dataDir, '--listen', `${options.listenIp ?? '127.0.0.1'}:0`];
  const flag = (name: string, value: string | number | undefined): void => {
    if (value !== undefined) args.push(`--${name}`, String(value));
  };
  flag('vms', options.vms ?? 4);
  flag('disks-per-vm', options.disksPerVm);
  flag('disk-size', options.diskSize ?? '16MiB');
  flag('seed', options.seed);
  flag('api', options.api);
  flag('session-ttl', options.sessionTtl);
  flag('clusters', options.clusters);
  flag('crt-page-regions', options.crtPageRegions);
  flag('task-duration', options.taskDuration);
  flag('faults', options.faults ? JSON.stringify(options.faults) : undefined);
  flag('iscsi', options.iscsi === false ? 'off' : undefined);
  flag('iscsi-acl', options.iscsiAcl);
  return args;
}

export async function startSim(options: SimOptions = {}): Promise<RunningSim> {
  const ownDir = options.dataDir === undefined;
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'prism-sim-')));
  const infoPath = join(dataDir, 'sim.json');
  await rm(infoPath, { force: true });
  // If the test process dies without stop(), the simulator gets SIGTERM and still cleans up its tgtd.
  const child: ChildProcess = spawn('setpriv', ['--pdeathsig', 'TERM', bin, ...argsFor(dataDir, options)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<void>((resolveExit) => child.once('exit', () => resolveExit()));
  const deadline = Date.now() + 60_000;
  while (!existsSync(infoPath)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      if (ownDir) await rm(dataDir, { recursive: true, force: true });
      throw new Error(`Prism simulator did not start (exit ${child.exitCode}): ${stderr.trim()}`);
    }
    await sleep(25);
  }
  const info = simInfoSchema.parse(JSON.parse(await readFile(infoPath, 'utf8')));
  const caPem = await readFile(info.caFile, 'utf8');
  const call = (method: string, path: string, body?: unknown): Promise<unknown> => adminCall({ endpoint: info.endpoint, adminToken: info.adminToken, caPem }, method, path, body);
  const vmPath = (name: string, index: number): string => `/_sim/vms/${encodeURIComponent(name)}/disks/${index}`;
  const admin: SimAdmin = {
    state: async () => stateSchema.parse(await call('GET', '/_sim/state')),
    counters: async () => countersSchema.parse(await call('GET', '/_sim/counters')),
    resetCounters: async () => void (await call('DELETE', '/_sim/counters')),
    addFaults: async (rules) => void (await call('POST', '/_sim/faults', { rules })),
    clearFaults: async () => void (await call('DELETE', '/_sim/faults')),
    expireSessions: async () => void (await call('POST', '/_sim/sessions/expire')),
    setNgt: async (name, ngt) => void (await call('PUT', `/_sim/vms/${encodeURIComponent(name)}/ngt`, ngt)),
    write: async (name, index, changedPercent, seed) => writeReportSchema.parse(await call('POST', `${vmPath(name, index)}/write`, { changedPercent, seed })),
    resize: async (name, index, sizeBytes) => void (await call('POST', `${vmPath(name, index)}/resize`, { sizeBytes })),
    settle: async () => void (await call('POST', '/_sim/settle')),
  };
  let stopped = false;
  return {
    endpoint: info.endpoint,
    username: info.username,
    password: info.password,
    viewerUsername: info.viewerUsername,
    caFile: info.caFile,
    caPem,
    dataDir,
    dataServicesIp: info.dataServicesIp,
    admin,
    diskPath: async (name, index) => z.object({ path: z.string() }).parse(await call('GET', vmPath(name, index))).path,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await Promise.race([exited, sleep(15_000).then(() => child.kill('SIGKILL'))]);
      }
      if (ownDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}
