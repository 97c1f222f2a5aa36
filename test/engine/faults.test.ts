/**
 * Faults during a backup: each ends with a clear error, no visible partial restore point and nothing orphaned on
 * Nutanix (the simulator's own state is the oracle), and the next backup succeeds.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { backupVm, type BackupRequest } from '../../src/engine/backup.ts';
import { createLogger } from '../../src/lib/log.ts';
import { createPrismClient } from '../../src/prism/client.ts';
import type { PrismClient } from '../../src/prism/types.ts';
import { listPoints, verifyRepository } from '../../src/repository/index.ts';
import { startSim, type RunningSim } from '../support/sim.ts';

const run = promisify(execFile);
const initiatorName = `iqn.2026-11.io.sendense:faults-${hostname()}`;
const logger = createLogger({ level: 'silent', name: 'faults-test' });
const vm = 'vm-0001';

describe('backup faults (v4 over iSCSI)', () => {
  let sim: RunningSim;
  let prism: PrismClient;
  let work: string;
  let repo: string;
  const backup = (overrides: Partial<BackupRequest> = {}) =>
    backupVm(prism, { repo, vm, mode: 'auto', consistency: 'crash', initiatorName, logger, ...overrides });

  /** Nothing of ours on Nutanix but the base recovery point of the newest restore point (if any). */
  async function expectNothingOrphaned(): Promise<void> {
    const points = await listPoints(repo);
    const state = await sim.admin.state();
    expect(state.recoveryPoints.map((r) => r.extId)).toEqual(points.length ? [points.at(-1)?.manifest.recoveryPoint.id] : []);
    expect(state.volumeGroups).toEqual([]);
    expect(state.iscsiTargets).toEqual([]);
  }

  async function expectNoStaging(): Promise<void> {
    for (const point of await listPoints(repo)) expect(point.pointId).not.toMatch(/^\./);
    const vmDirs = (await readdir(repo, { recursive: true })).filter((p) => /\.staging-/.test(p));
    expect(vmDirs).toEqual([]);
  }

  beforeAll(async () => {
    sim = await startSim({ api: 'v4', vms: 1, disksPerVm: 2, diskSize: '64MiB' });
    prism = createPrismClient({ endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem }, { logger, retry: { baseDelayMs: 20, maxDelayMs: 200 } });
    work = await mkdtemp(join(tmpdir(), 'faults-'));
    repo = join(work, 'repo');
    await backup(); // the base every test builds on
  });
  beforeEach(async () => {
    await sim.admin.clearFaults();
    await sim.admin.write(vm, 0, 3);
  });
  afterAll(async () => {
    await prism?.close();
    await sim?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('qemu-nbd killed mid-copy: a data-path error, then an incremental succeeds', async () => {
    let killed = false;
    const failing = backup({
      mode: 'full',
      tuning: { requestSize: 64 * 1024, inFlight: 1 },
      onProgress: (event) => {
        if (event.phase === 'copying' && !killed) {
          killed = true;
          // Synchronous, so no further read is answered by the old server.
          execFileSync('pkill', ['-KILL', '-f', `qemu-nbd.*${sim.dataServicesIp}`]);
        }
      },
    });
    await expect(failing).rejects.toMatchObject({ code: 'DATA_PATH' });
    expect(killed).toBe(true);
    await expectNoStaging();
    await expectNothingOrphaned();
    expect((await backup()).point.manifest.type).toBe('incremental');
  });

  it('a recovery point task that fails: TaskFailed, nothing created', async () => {
    await sim.admin.addFaults([{ kind: 'taskFail', match: { path: 'CreateRecoveryPoint' }, count: 1, message: 'Injected: cerebro is down' }]);
    await expect(backup()).rejects.toMatchObject({ code: 'TASK_FAILED', message: expect.stringContaining('cerebro is down') });
    await expectNoStaging();
    await expectNothingOrphaned();
    expect((await backup()).point.manifest.type).toBe('incremental');
  });

  it('adding the disk to the export failing while changed regions are planned: TaskFailed, nothing orphaned', async () => {
    await sim.admin.addFaults([{ kind: 'taskFail', match: { path: 'CreateVolumeDisk' }, count: 1, message: 'Injected: stargate is busy' }]);
    await expect(backup()).rejects.toMatchObject({ code: 'TASK_FAILED', message: expect.stringContaining('stargate is busy') });
    await expectNoStaging();
    await expectNothingOrphaned();
    expect((await backup()).point.manifest.type).toBe('incremental');
    await expectNothingOrphaned();
  });

  it('an export prepared ahead that fails (iSCSI attach) is made again after the recovery point', async () => {
    await sim.admin.addFaults([{ kind: 'taskFail', match: { path: 'AttachIscsiClient' }, count: 1, message: 'Injected: attach refused' }]);
    await sim.admin.resetCounters();
    expect((await backup()).point.manifest.type).toBe('incremental');
    // Two disks: two groups made and attached ahead, one of them again after its attach failed.
    const { byRoute } = await sim.admin.counters();
    expect(byRoute['POST /api/volumes/v4.0/config/volume-groups']).toBe(3);
    expect(byRoute['POST /api/volumes/v4.0/config/volume-groups/{extId}/$actions/attach-iscsi-client']).toBe(3);
    await expectNothingOrphaned();
  });

  it('a short 429 storm is ridden out; an endless one fails clearly and the next run cleans up', async () => {
    await sim.admin.addFaults([{ kind: 'rateLimit', count: 5, retryAfterSeconds: 0 }]);
    expect((await backup()).point.manifest.type).toBe('incremental');

    await sim.admin.write(vm, 0, 3);
    await sim.admin.addFaults([{ kind: 'rateLimit', match: { path: 'compute-changed-regions|changed_regions|volume-groups' }, retryAfterSeconds: 0 }]);
    await expect(backup()).rejects.toMatchObject({ code: 'RATE_LIMITED' });
    await expectNoStaging();
    await sim.admin.clearFaults();
    expect((await backup()).point.manifest.type).toBe('incremental');
    await expectNothingOrphaned();
  });

  it('sessions expiring mid-backup: the client logs in again and the backup succeeds', async () => {
    let expired = 0;
    const result = await backup({
      onProgress: (event) => {
        if (expired < 2) {
          expired++;
          void sim.admin.expireSessions();
        }
        void event;
      },
    });
    expect(expired).toBeGreaterThan(0);
    expect(result.point.manifest.type).toBe('incremental');
    await expectNothingOrphaned();
  });

  it('a full repository filesystem: NoSpace, no visible point, recovery point deleted', async (ctx) => {
    const small = join(work, 'small');
    await mkdir(small, { recursive: true });
    try {
      await run('mount', ['-t', 'tmpfs', '-o', 'size=12m', 'tmpfs', small]);
    } catch (err) {
      ctx.skip(`mount -t tmpfs refused: ${(err as Error).message}`);
    }
    try {
      await expect(backupVm(prism, { repo: join(small, 'repo'), vm, mode: 'auto', consistency: 'crash', initiatorName, logger })).rejects.toMatchObject({
        code: 'NO_SPACE',
      });
      expect(await listPoints(join(small, 'repo'))).toEqual([]);
      await expectNothingOrphaned();
    } finally {
      await run('umount', [small]);
    }
  });

  it('the process SIGKILLed between copy and commit: the next backup deletes what it left and succeeds', async () => {
    const credentials = join(work, 'password');
    await writeFile(credentials, sim.password);
    const child = spawn(
      join(import.meta.dirname, '../../bin/sendense-nutanix'),
      ['backup', '--endpoint', sim.endpoint, '--username', sim.username, '--password-file', credentials, '--ca-file', sim.caFile, '--vm', vm, '--repo', repo, '--consistency', 'crash', '--initiator-name', initiatorName],
      { env: { ...process.env, SENDENSE_FAILPOINT: 'before-commit' }, stdio: 'ignore' },
    );
    const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, sig) => resolve(sig)));
    expect(signal).toBe('SIGKILL');
    const staging = (await readdir(repo, { recursive: true })).filter((p) => /\.staging-/.test(p));
    expect(staging.length).toBeGreaterThan(0);
    const left = await sim.admin.state();
    expect(left.recoveryPoints.length).toBe(2); // the base and the dead attempt's
    // Killed right after the copies, while the exports were being released (that runs beside the commit).
    expect(left.volumeGroups.length).toBeGreaterThan(0);

    const next = await backup();
    expect(next.point.manifest.type).toBe('incremental');
    await expectNoStaging();
    await expectNothingOrphaned();
    expect((await verifyRepository(repo, { checksums: true })).issues).toEqual([]);
  });
});
