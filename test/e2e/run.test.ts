/**
 * VMBackupRun end to end on the real kube-apiserver: the operator (a local process under the chart's RBAC) drives
 * runs whose export Jobs the kubelet stand-in runs as real movers against the Prism simulator (real tgtd iSCSI,
 * real qemu-nbd, real files). Restored disks are compared with the simulator's disks. Faults: run-faults.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireTestbedBinaries } from '../support/testbed.ts';
import { vmBackupPolicyType } from '../../src/operator/resources.ts';
import { byHand, claimName, clusterName, condition, finished, noLeftoversOnNutanix, startE2e, type E2e } from './support.ts';

describe('VMBackupRun e2e', () => {
  let e2e: E2e;

  beforeAll(async () => {
    await requireTestbedBinaries();
    e2e = await startE2e();
  }, 180_000);

  afterAll(async () => {
    await e2e?.stop();
  });

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
    await noLeftoversOnNutanix(e2e, 1);
  });

  it('never runs two runs of one VM at once: the younger waits, naming the older, then chains onto it', async () => {
    // A suspended policy: the second run takes cluster, repository and consistency from it (kubectl create style "run now").
    await e2e.api.create(
      vmBackupPolicyType,
      e2e.namespace,
      {
        apiVersion: 'backup.sendense.io/v1alpha1',
        kind: 'VMBackupPolicy',
        metadata: { name: 'manual' },
        spec: { clusterRef: { name: clusterName }, selector: { vmNames: ['vm-0002'] }, schedule: '@daily', suspend: true, consistency: 'crash', repository: { persistentVolumeClaim: { claimName } } },
      },
      AbortSignal.timeout(10_000),
    );
    await e2e.createRun('vm2-first', byHand('vm-0002'));
    await e2e.createRun('vm2-second', { vm: { name: 'vm-0002' }, policyRef: { name: 'manual' } });
    const waiting = await e2e.waitForRun('vm2-second', (r) => condition(r, 'Waiting')?.reason === 'WaitingForRun', 'the second run waiting', 60_000);
    expect(waiting.status?.phase).toBe('Pending');
    expect(condition(waiting, 'Waiting')?.message).toContain('vm2-first');
    const first = await e2e.waitForRun('vm2-first', finished, 'the first run finishing');
    expect(first.status?.phase, first.status?.failureReason).toBe('Succeeded');
    const second = await e2e.waitForRun('vm2-second', finished, 'the second run finishing');
    expect(second.status?.phase, second.status?.failureReason).toBe('Succeeded');
    expect(second.status?.base?.runName).toBe('vm2-first');
    expect(second.status?.consistency).toBe('crash');
    expect(Date.parse(second.status?.startTime ?? '')).toBeGreaterThanOrEqual(Date.parse(first.status?.completionTime ?? ''));
    await noLeftoversOnNutanix(e2e, 2);
  });
});
