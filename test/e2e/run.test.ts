/**
 * VMBackupRun end to end on the real kube-apiserver: the operator (a local process under the chart's RBAC) drives
 * runs whose export Jobs the kubelet stand-in runs as real movers against the Prism simulator (real tgtd iSCSI,
 * real qemu-nbd, real files). Restored disks are compared with the simulator's disks.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VMBackupRun } from '../../src/crds/vm-backup-run.ts';
import { vmBackupRunType } from '../../src/operator/resources.ts';
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

  /** No volume group or iSCSI target left, and exactly the recovery points the VMs' latest runs keep as bases. */
  async function noLeftoversOnNutanix(keepRecoveryPoints: number): Promise<void> {
    let state = await e2e.sim.admin.state();
    // A mover stopped by SIGTERM releases its volume group on the way out: give it the stand-in's grace period.
    for (let i = 0; i < 40 && (state.volumeGroups.length > 0 || state.iscsiTargets.length > 0); i++) {
      await sleep(250);
      state = await e2e.sim.admin.state();
    }
    expect(state.volumeGroups).toEqual([]);
    expect(state.iscsiTargets).toEqual([]);
    expect(state.recoveryPoints.map((rp) => rp.name)).toHaveLength(keepRecoveryPoints);
  }

  async function untilExporting(name: string): Promise<VMBackupRun> {
    return e2e.waitForRun(name, (r) => r.status?.phase === 'Exporting' && (r.status.disks ?? []).some((d) => d.jobName), 'Exporting with a Job', 60_000);
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

  it('continues a run after the operator is killed (SIGKILL) during Exporting and restarted; nothing is orphaned', async () => {
    await e2e.createRun('vm2-killed', byHand('vm-0002'));
    await untilExporting('vm2-killed');
    await e2e.killOperator();
    await e2e.startOperator();
    const run = await e2e.waitForRun('vm2-killed', finished, 'the run finishing after the restart');
    expect(run.status?.phase, run.status?.failureReason).toBe('Succeeded');
    expect(run.status?.recoveryPointIds).toHaveLength(1);
    expect(await e2e.compareWithSim('vm-0002', run.status?.vm?.uuid ?? '', 1)).toBe('Images are identical.');
    await noLeftoversOnNutanix(2);
  });

  it('cleans up a run deleted mid-flight: its Jobs go, its recovery point is deleted on Nutanix, the base of the VM stays', async () => {
    await e2e.createRun('vm1-deleted', byHand('vm-0001'));
    const run = await untilExporting('vm1-deleted');
    const ownRecoveryPoint = run.status?.recoveryPointIds?.[0];
    expect(ownRecoveryPoint).toBeDefined();
    expect(await e2e.jobsOf('vm1-deleted')).not.toEqual([]);
    await e2e.api.delete(vmBackupRunType, e2e.namespace, 'vm1-deleted', AbortSignal.timeout(10_000));
    for (let i = 0; i < 120 && (await e2e.getRun('vm1-deleted')); i++) await sleep(250);
    expect(await e2e.getRun('vm1-deleted')).toBeUndefined();
    expect(await e2e.jobsOf('vm1-deleted')).toEqual([]);
    const state = await e2e.sim.admin.state();
    expect(state.recoveryPoints.map((rp) => rp.extId)).not.toContain(ownRecoveryPoint);
    await noLeftoversOnNutanix(2);
  });

  it('fails a run whose disk export fails, names the reason, and cleans up its recovery point and staging', async () => {
    // Every volume group creation task fails: the movers cannot export the disks.
    await e2e.sim.admin.addFaults([{ kind: 'taskFail', match: { path: '^CreateVolumeGroup$' }, count: 20, message: 'storage container is read-only' }]);
    try {
      await e2e.createRun('vm2-fails', { ...byHand('vm-0002'), type: 'full' });
      const run = await e2e.waitForRun('vm2-fails', (r) => condition(r, 'CleanedUp')?.status === 'True', 'the failed run cleaned up');
      expect(run.status?.phase).toBe('Failed');
      expect(condition(run, 'Ready')).toMatchObject({ status: 'False', reason: 'ExportFailed' });
      expect(condition(run, 'Succeeded')?.status).toBe('False');
      expect(run.status?.failureReason).toMatch(/^disk \d: /);
      expect(run.status?.disks?.some((d) => d.failureReason)).toBe(true);
      expect(run.status?.cleanupJobName, JSON.stringify(run.status)).toBe('vm2-fails-cleanup');
      const state = await e2e.sim.admin.state();
      expect(state.recoveryPoints.map((rp) => rp.extId)).not.toContain(run.status?.recoveryPointIds?.[0]);
      await noLeftoversOnNutanix(2);
      // No staging folder of the failed point remains in the repository.
      const { readdir } = await import('node:fs/promises');
      const entries = await readdir(`${e2e.repositoryDir}/${run.status?.vm?.clusterUUID}/${run.status?.vm?.uuid}`);
      expect(entries.filter((e) => e.includes(run.status?.pointId ?? '-'))).toEqual([]);
    } finally {
      await e2e.sim.admin.clearFaults();
    }
  });

  it('fails a run whose mover is SIGKILLed mid-copy and releases the volume group the mover could not', async () => {
    await e2e.createRun('vm2-killed-mover', { ...byHand('vm-0002'), type: 'full' });
    const run = await untilExporting('vm2-killed-mover');
    const uid = (await e2e.api.get(vmBackupRunType, e2e.namespace, 'vm2-killed-mover', AbortSignal.timeout(10_000)) as { metadata: { uid: string } }).metadata.uid;
    // Wait until a mover holds an export volume group tagged with the run's uid, then kill that mover's process group.
    let tagged: string | undefined;
    for (let i = 0; i < 200 && !tagged; i++) {
      tagged = (await e2e.sim.admin.state()).volumeGroups.find((vg) => vg.name.startsWith(`sendense-export-${uid}-`))?.name;
      if (!tagged) await sleep(50);
    }
    expect(tagged, 'a mover exported a disk').toBeDefined();
    const jobName = run.status?.disks?.[0]?.jobName ?? '';
    const mover = await e2e.kubelet.started(jobName);
    process.kill(-mover.pid, 'SIGKILL');
    const failed = await e2e.waitForRun('vm2-killed-mover', (r) => ['True', 'False'].includes(condition(r, 'CleanedUp')?.status ?? '') && condition(r, 'CleanedUp')?.reason !== 'CleaningUp', 'the failed run cleaned up');
    expect(failed.status?.phase).toBe('Failed');
    expect(condition(failed, 'Ready')?.reason).toBe('ExportFailed');
    expect(condition(failed, 'CleanedUp')?.status).toBe('True');
    await noLeftoversOnNutanix(2);
  });
});
