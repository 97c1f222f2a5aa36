/**
 * The backup engine end to end against the real simulator, real qemu-nbd (over tgtd iSCSI for v4, the
 * snapshot file for v3), the TypeScript qcow2 writer and real files; restored disks are compared with the
 * simulator's disks by qemu-img, an independent oracle.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupSummary } from '../../src/cli/backup.ts';
import { backupVm, type BackupRequest } from '../../src/engine/backup.ts';
import { createLogger } from '../../src/lib/log.ts';
import { createPrismClient } from '../../src/prism/client.ts';
import type { PrismClient } from '../../src/prism/types.ts';
import { restoreDisk, verifyRepository } from '../../src/repository/index.ts';
import { startSim, type RunningSim } from '../support/sim.ts';

const run = promisify(execFile);
const initiatorName = `iqn.2026-11.io.sendense:test-${hostname()}`;
const logger = createLogger({ level: 'warn', name: 'engine-test' });

async function compareWithSim(sim: RunningSim, repo: string, vm: string, disk: number, work: string): Promise<void> {
  const out = join(work, `restored-${vm}-${disk}.raw`);
  await restoreDisk({ repo, vm, diskIndex: disk, out, format: 'raw' });
  const { stdout } = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, await sim.diskPath(vm, disk)]);
  expect(stdout).toContain('Images are identical');
  await rm(out);
}

for (const api of ['v4', 'v3'] as const) {
  describe(`backup engine (${api})`, () => {
    let sim: RunningSim;
    let prism: PrismClient;
    let work: string;
    let repo: string;
    const vm = 'vm-0001';
    const backup = (overrides: Partial<BackupRequest> = {}) =>
      backupVm(prism, { repo, vm, mode: 'auto', consistency: 'auto', initiatorName, logger, ...overrides });

    beforeAll(async () => {
      sim = await startSim({ api, vms: 2, disksPerVm: 2, diskSize: '64MiB' });
      prism = createPrismClient(
        { endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: await readFile(sim.caFile, 'utf8') },
        { logger },
      );
      work = await mkdtemp(join(tmpdir(), `engine-${api}-`));
      repo = join(work, 'repo');
    });
    afterAll(async () => {
      await prism?.close();
      await sim?.stop();
      if (work) await rm(work, { recursive: true, force: true });
    });

    it('takes a full, then incrementals that move only changed bytes, each restoring bit-exact', async () => {
      const full = await backup();
      expect(full.point.manifest.type).toBe('full');
      for (const disk of [0, 1]) await compareWithSim(sim, repo, vm, disk, work);

      const written = await sim.admin.write(vm, 0, 5, 7);
      const changedBytes = written.blocks.reduce((sum, b) => sum + b.length, 0);
      const incremental = await backup();
      expect(incremental.point.manifest.type).toBe('incremental');
      expect(incremental.point.manifest.parentPointId).toBe(full.point.pointId);
      expect(incremental.deletedBaseRecoveryPoints).toEqual([full.point.manifest.recoveryPoint.id]);
      const [disk0, disk1] = incremental.point.manifest.disks;
      // Exact tracking: the changed bytes are the blocks the guest wrote; the zero-filled ones are never transferred.
      const zeroWritten = written.blocks.filter((b) => b.zero).reduce((sum, b) => sum + b.length, 0);
      expect(zeroWritten).toBeGreaterThan(0);
      expect(disk0?.stats.changedBytes).toBe(changedBytes);
      expect(disk0?.stats.zeroBytes).toBe(zeroWritten);
      expect(disk0?.stats.transferredBytes).toBe(changedBytes - zeroWritten);
      expect(disk0?.stats.transferredBytes).toBeLessThanOrEqual(1.1 * changedBytes);
      expect(disk1?.stats.transferredBytes).toBe(0);
      // `backup -o json` tells where the time went, per phase and per disk.
      const { timings } = backupSummary(incremental);
      expect(timings.disks.map((d) => d.index)).toEqual([0, 1]);
      expect(timings.totalMs).toBeGreaterThanOrEqual(Math.max(...timings.disks.map((d) => d.copyMs)));
      // Every disk reports its phases, the export teardown too although it ran beside the commit.
      expect(incremental.timings.disks.map((d) => d.index)).toEqual([0, 1]);
      for (const phases of incremental.timings.disks) expect(phases.exportTeardownMs).toBeGreaterThan(0);
      for (const disk of [0, 1]) await compareWithSim(sim, repo, vm, disk, work);

      await sim.admin.write(vm, 1, 10, 8);
      const third = await backup();
      expect(third.point.manifest.parentPointId).toBe(incremental.point.pointId);
      for (const disk of [0, 1]) await compareWithSim(sim, repo, vm, disk, work);

      const report = await verifyRepository(repo, { checksums: true });
      expect(report.issues).toEqual([]);
      expect(report.ok).toBe(true);

      // Nothing is left on Nutanix but the newest recovery point, kept as the next base.
      const state = await sim.admin.state();
      const live = api === 'v4' ? state.recoveryPoints.map((r) => r.extId) : state.vmSnapshots.map((s) => s.uuid);
      expect(live).toEqual([third.point.manifest.recoveryPoint.id]);
      expect(state.volumeGroups).toEqual([]);
      expect(state.iscsiTargets).toEqual([]);
    });

    it('falls back to a full backup, with the reason, when the base recovery point is gone', async () => {
      const before = await backup();
      await prism.deleteRecoveryPoint(before.point.manifest.recoveryPoint.id);
      const after = await backup();
      expect(after.point.manifest.type).toBe('full');
      expect(after.point.manifest.typeReason).toMatch(/gone/);
      await expect(backup({ mode: 'incremental', vm: 'vm-0002' })).rejects.toThrow(/incremental backup impossible: no previous restore point/);
    });
  });
}
