/**
 * releaseExportVolumeGroups against the simulator: the volume groups a killed exporter left (found by their tag in
 * the name) are detached and deleted, other exports are left alone; v3 has nothing to release.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/lib/log.ts';
import { createPrismClient } from '../../src/prism/client.ts';
import { Consistency, type PrismClient } from '../../src/prism/types.ts';
import { startSim, type RunningSim } from '../support/sim.ts';

const initiatorName = 'iqn.2026-01.io.sendense:mover-release-test';

describe('releaseExportVolumeGroups', () => {
  let sim: RunningSim;
  let prism: PrismClient;

  beforeAll(async () => {
    sim = await startSim({ vms: 1, disksPerVm: 2 });
    prism = createPrismClient({ endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem }, { logger: createLogger({ name: 'test', level: 'warn' }) });
  });

  afterAll(async () => {
    await prism?.close();
    await sim?.stop();
  });

  it('deletes the tagged volume groups a killed exporter left, and only those', async () => {
    const signal = AbortSignal.timeout(60_000);
    const vm = await prism.findVm('vm-0001', signal);
    const rp = await prism.createRecoveryPoint({ vm, name: 'release-test', consistency: Consistency.Crash, requestId: randomUUID(), signal });
    const [first, second] = rp.disks;
    if (!first || !second) throw new Error('the recovery point has fewer than two disks');
    // Never released: as if the mover was SIGKILLed while copying.
    await prism.exportDisk({ recoveryPoint: rp, disk: first, initiatorName, exportTag: 'run-1234', signal });
    const other = await prism.exportDisk({ recoveryPoint: rp, disk: second, initiatorName, exportTag: 'run-5678', signal });
    expect((await sim.admin.state()).volumeGroups.map((vg) => vg.name).sort()).toEqual([expect.stringMatching(/^sendense-export-run-1234-/), expect.stringMatching(/^sendense-export-run-5678-/)]);

    const released = await prism.releaseExportVolumeGroups('run-1234', signal);
    expect(released).toHaveLength(1);
    const state = await sim.admin.state();
    expect(state.volumeGroups.map((vg) => vg.name)).toEqual([expect.stringMatching(/^sendense-export-run-5678-/)]);
    expect(state.iscsiTargets).toHaveLength(1);
    expect(await prism.releaseExportVolumeGroups('run-1234', signal)).toEqual([]);

    await other.release(signal);
    await prism.deleteRecoveryPoint(rp.id, signal);
    const after = await sim.admin.state();
    expect(after.volumeGroups).toEqual([]);
    expect(after.iscsiTargets).toEqual([]);
  });

  it('has nothing to release on a v3-only Prism Central', async () => {
    const v3sim = await startSim({ vms: 1, api: 'v3' });
    const v3 = createPrismClient({ endpoint: v3sim.endpoint, username: v3sim.username, password: v3sim.password, caPem: v3sim.caPem });
    try {
      expect(await v3.releaseExportVolumeGroups('run-1234', AbortSignal.timeout(30_000))).toEqual([]);
    } finally {
      await v3.close();
      await v3sim.stop();
    }
  });
});
