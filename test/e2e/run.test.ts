/**
 * VMBackupRun end to end on the real kube-apiserver: the operator (a local process under the chart's RBAC) drives
 * runs whose export Jobs the kubelet stand-in runs as real movers against the Prism simulator (real tgtd iSCSI,
 * real qemu-nbd, real files). Restored disks are compared with the simulator's disks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VMBackupRun } from '../../src/crds/vm-backup-run.ts';
import { requireTestbedBinaries } from '../support/testbed.ts';
import { claimName, clusterName, startE2e, type E2e } from './support.ts';

const byHand = (vm: string) => ({ vm: { name: vm }, clusterRef: { name: clusterName }, repository: { persistentVolumeClaim: { claimName } } });
const finished = (run: VMBackupRun) => ['Succeeded', 'PartiallyFailed', 'Failed'].includes(run.status?.phase ?? '');
const condition = (run: VMBackupRun | undefined, type: string) => run?.status?.conditions?.find((c) => c.type === type);

describe('VMBackupRun e2e', () => {
  let e2e: E2e;

  beforeAll(async () => {
    await requireTestbedBinaries();
    e2e = await startE2e();
  }, 180_000);

  afterAll(async () => {
    await e2e?.stop();
  });

  async function noLeftoversOnNutanix(keepRecoveryPoints: number): Promise<void> {
    const state = await e2e.sim.admin.state();
    expect(state.volumeGroups).toEqual([]);
    expect(state.iscsiTargets).toEqual([]);
    expect(state.recoveryPoints.length).toBe(keepRecoveryPoints);
  }

  it('backs up a two-disk VM: a full, then an incremental after guest writes; figures and printer columns filled, disks equal the simulator’s', async () => {
    await e2e.createRun('vm1-full', byHand('vm-0001'));
    const full = await e2e.waitForRun('vm1-full', finished, 'the full run finishing');
    expect(full.status?.phase, full.status?.failureReason).toBe('Succeeded');
    expect(full.status?.backupType).toBe('Full');
    expect(full.status?.backupTypeReason).toContain('first backup');
    expect(full.status?.disks).toHaveLength(2);
    for (const disk of full.status?.disks ?? []) {
      expect(disk.progressPercent).toBe(100);
      expect(disk.sizeBytes).toBeGreaterThan(15 * 1024 * 1024); // the simulator gives some disks an unaligned tail
      expect(disk.jobName).toMatch(/^vm1-full-disk-\d$/);
    }
    expect(full.status?.totals?.transferredBytes).toBeGreaterThan(0);
    expect(condition(full, 'Ready')?.status).toBe('True');
    expect(condition(full, 'Succeeded')?.status).toBe('True');
    const vmUuid = full.status?.vm?.uuid ?? '';
    for (const disk of [0, 1]) expect(await e2e.compareWithSim('vm-0001', vmUuid, disk)).toBe('Images are identical.');

    await e2e.sim.admin.write('vm-0001', 0, 5, 7);
    await e2e.sim.admin.write('vm-0001', 1, 5, 8);
    await e2e.createRun('vm1-incr', byHand('vm-0001'));
    const incr = await e2e.waitForRun('vm1-incr', finished, 'the incremental run finishing');
    expect(incr.status?.phase, incr.status?.failureReason).toBe('Succeeded');
    expect(incr.status?.backupType).toBe('Incremental');
    expect(incr.status?.base?.runName).toBe('vm1-full');
    const changed = incr.status?.totals?.changedBytes ?? 0;
    expect(changed).toBeGreaterThan(0);
    expect(changed).toBeLessThan(full.status?.totals?.changedBytes ?? 0);
    for (const disk of [0, 1]) expect(await e2e.compareWithSim('vm-0001', vmUuid, disk)).toBe('Images are identical.');

    const row = await e2e.printerRow('vm1-incr');
    expect(row).toMatchObject({ VM: 'vm-0001', Type: 'Incremental', Phase: 'Succeeded' });
    expect(row.Changed).toMatch(/^\d+(\.\d+)? (B|KiB|MiB)$/);
    expect(row.Throughput).toMatch(/\/s$/);
    expect(row.Duration).toMatch(/^\d+(m\d+)?s$/);
    // The full's recovery point was superseded and deleted; only the newest remains as the next base.
    await noLeftoversOnNutanix(1);
  });
});
