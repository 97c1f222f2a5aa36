/**
 * prepareExport against the simulator: a volume group made and attached before the recovery point is the one
 * exportDisk fills; one on another cluster than the recovery point, or handed to an export that cannot start, is
 * detached and deleted.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/lib/log.ts';
import { createPrismClient } from '../../src/prism/client.ts';
import { Consistency, type PrismClient, type RecoveryPoint, type Vm } from '../../src/prism/types.ts';
import { startSim, type RunningSim } from '../support/sim.ts';

const initiatorName = 'iqn.2026-01.io.sendense:prepared-export-test';

describe('prepareExport (v4)', () => {
  let sim: RunningSim;
  let prism: PrismClient;
  let vm: Vm;
  let rp: RecoveryPoint;
  const signal = AbortSignal.timeout(120_000);

  beforeAll(async () => {
    sim = await startSim({ vms: 1, disksPerVm: 1, clusters: 2 });
    prism = createPrismClient({ endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem }, { logger: createLogger({ name: 'test', level: 'silent' }) });
    vm = await prism.findVm('vm-0001', signal);
    rp = await prism.createRecoveryPoint({ vm, name: 'prepared-export', consistency: Consistency.Crash, requestId: randomUUID(), signal });
  });
  afterAll(async () => {
    if (rp) await prism.deleteRecoveryPoint(rp.id, signal);
    await prism?.close();
    await sim?.stop();
  });

  const disk = () => {
    const found = rp.disks[0];
    if (!found) throw new Error('the recovery point has no disk');
    return found;
  };

  it('makes an empty tagged volume group attached to the initiator, which exportDisk then fills and releases', async () => {
    const prepared = await prism.prepareExport({ clusterUuid: vm.cluster.uuid, initiatorName, exportTag: 'point-1', signal });
    expect(prepared?.clusterUuid).toBe(vm.cluster.uuid);
    // Attached while empty: no iSCSI target until the disk is added.
    const before = await sim.admin.state();
    expect(before.volumeGroups).toEqual([
      expect.objectContaining({ extId: prepared?.volumeGroupId, disks: 0, attachedInitiators: [initiatorName], name: expect.stringMatching(/^sendense-export-point-1-/) }),
    ]);
    expect(before.iscsiTargets).toEqual([]);

    const exported = await prism.exportDisk({ recoveryPoint: rp, disk: disk(), initiatorName, exportTag: 'point-1', ...(prepared ? { prepared } : {}), signal });
    expect(exported.kind).toBe('iscsi');
    const state = await sim.admin.state();
    expect(state.volumeGroups).toEqual([expect.objectContaining({ extId: prepared?.volumeGroupId, disks: 1, attachedInitiators: [initiatorName] })]);
    expect(state.iscsiTargets).toHaveLength(1);
    await exported.release(signal);
    expect((await sim.admin.state()).volumeGroups).toEqual([]);
  });

  it('deletes a volume group prepared on another cluster than the recovery point and exports from the right one', async () => {
    const otherCluster = (await prism.capabilities(signal)).clusters.find((c) => !c.isPrismCentral && c.uuid !== rp.clusterUuid);
    if (!otherCluster) throw new Error('the simulator has no second cluster');
    const misplaced = await prism.prepareExport({ clusterUuid: otherCluster.uuid, initiatorName, exportTag: 'point-2', signal });
    const exported = await prism.exportDisk({ recoveryPoint: rp, disk: disk(), initiatorName, exportTag: 'point-2', ...(misplaced ? { prepared: misplaced } : {}), signal });
    const groups = (await sim.admin.state()).volumeGroups;
    expect(groups).toHaveLength(1);
    expect(groups[0]?.extId).not.toBe(misplaced?.volumeGroupId);
    await exported.release(signal);
    expect((await sim.admin.state()).volumeGroups).toEqual([]);
  });

  it('deletes the prepared volume group when the export cannot start', async () => {
    const prepared = await prism.prepareExport({ clusterUuid: vm.cluster.uuid, initiatorName, exportTag: 'point-3', signal });
    const notV4 = { diskUuid: disk().diskUuid };
    await expect(prism.exportDisk({ recoveryPoint: rp, disk: notV4, initiatorName, ...(prepared ? { prepared } : {}), signal })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    expect((await sim.admin.state()).volumeGroups).toEqual([]);
  });
});
