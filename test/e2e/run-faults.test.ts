/**
 * VMBackupRun faults end to end (same set-up as run.test.ts): the operator SIGKILLed mid-run and restarted, a run
 * deleted mid-flight, a disk export that fails, a mover SIGKILLed mid-copy, a deletion while Prism is down. After each, nothing is left on the
 * simulator but the recovery points the VMs' committed runs keep as bases.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { eventType } from '../../src/operator/events.ts';
import { vmBackupRunType } from '../../src/operator/resources.ts';
import { createPrismClient } from '../../src/prism/client.ts';
import { requireTestbedBinaries } from '../support/testbed.ts';
import { byHand, condition, finished, noLeftoversOnNutanix, startE2e, untilExporting, type E2e } from './support.ts';

describe('VMBackupRun e2e faults', () => {
  let e2e: E2e;

  beforeAll(async () => {
    await requireTestbedBinaries();
    e2e = await startE2e({ operatorEnv: { SENDENSE_RUN_DELETION_DEADLINE: '4s' } });
  }, 180_000);

  afterAll(async () => {
    await e2e?.stop();
  });

  it('continues a run after the operator is killed (SIGKILL) during Exporting and restarted; nothing is orphaned', async () => {
    await e2e.createRun('vm1-killed', byHand('vm-0001'));
    await untilExporting(e2e, 'vm1-killed');
    await e2e.killOperator();
    await e2e.startOperator();
    const run = await e2e.waitForRun('vm1-killed', finished, 'the run finishing after the restart');
    expect(run.status?.phase, run.status?.failureReason).toBe('Succeeded');
    expect(run.status?.recoveryPointIds).toHaveLength(1);
    expect(await e2e.compareWithSim('vm-0001', run.status?.vm?.uuid ?? '', 1)).toBe('Images are identical.');
    await noLeftoversOnNutanix(e2e, 1);
  });

  it('ends PartiallyFailed when the old base cannot be deleted after the commit; the next run deletes it', async () => {
    await e2e.sim.admin.addFaults([{ kind: 'taskFail', match: { path: '^DeleteRecoveryPoint$' }, count: 1, message: 'recovery point is locked' }]);
    await e2e.createRun('vm1-partial', byHand('vm-0001'));
    const partial = await e2e.waitForRun('vm1-partial', finished, 'the run finishing');
    expect(partial.status?.phase, partial.status?.failureReason).toBe('PartiallyFailed');
    expect(partial.status?.backupType).toBe('Incremental');
    expect(condition(partial, 'Ready')?.reason).toBe('BaseRecoveryPointKept');
    expect(condition(partial, 'Succeeded')?.status).toBe('True');
    expect(condition(partial, 'BaseRecoveryPointDeleted')?.message).toContain(partial.status?.base?.recoveryPointId ?? '-');
    expect(await e2e.compareWithSim('vm-0001', partial.status?.vm?.uuid ?? '', 0)).toBe('Images are identical.');
    await noLeftoversOnNutanix(e2e, 2);

    await e2e.createRun('vm1-after-partial', byHand('vm-0001'));
    const next = await e2e.waitForRun('vm1-after-partial', finished, 'the next run finishing');
    expect(next.status?.phase, next.status?.failureReason).toBe('Succeeded');
    expect(next.status?.base?.runName).toBe('vm1-partial');
    await noLeftoversOnNutanix(e2e, 1);
  });

  it('cleans up a run deleted mid-flight: its Jobs go, its recovery point is deleted on Nutanix, the base of the VM stays', async () => {
    await e2e.createRun('vm1-deleted', byHand('vm-0001'));
    const run = await untilExporting(e2e, 'vm1-deleted');
    const ownRecoveryPoint = run.status?.recoveryPointIds?.[0];
    expect(ownRecoveryPoint).toBeDefined();
    expect(await e2e.jobsOf('vm1-deleted')).not.toEqual([]);
    await e2e.api.delete(vmBackupRunType, e2e.namespace, 'vm1-deleted', AbortSignal.timeout(10_000));
    for (let i = 0; i < 120 && (await e2e.getRun('vm1-deleted')); i++) await sleep(250);
    expect(await e2e.getRun('vm1-deleted')).toBeUndefined();
    expect(await e2e.jobsOf('vm1-deleted')).toEqual([]);
    const state = await e2e.sim.admin.state();
    expect(state.recoveryPoints.map((rp) => rp.extId)).not.toContain(ownRecoveryPoint);
    await noLeftoversOnNutanix(e2e, 1);
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
      await noLeftoversOnNutanix(e2e, 1);
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
    await untilExporting(e2e, 'vm2-killed-mover');
    const uid = (await e2e.api.get(vmBackupRunType, e2e.namespace, 'vm2-killed-mover', AbortSignal.timeout(10_000)) as { metadata: { uid: string } }).metadata.uid;
    // Wait until a mover holds an export volume group tagged with the run's uid, then kill that mover's process group.
    let tagged: string | undefined;
    for (let i = 0; i < 200 && !tagged; i++) {
      tagged = (await e2e.sim.admin.state()).volumeGroups.find((vg) => vg.name.startsWith(`sendense-export-${uid}-`))?.name;
      if (!tagged) await sleep(50);
    }
    expect(tagged, 'a mover exported a disk').toBeDefined();
    // Exporting can be reported before the disks' Jobs are named in the status: wait for the names.
    const named = (r: Awaited<ReturnType<E2e['waitForRun']>>) => (r.status?.disks ?? []).length > 0 && (r.status?.disks ?? []).every((d) => d.jobName);
    const run = await e2e.waitForRun('vm2-killed-mover', named, "every disk's mover Job named in the status");
    // Kill every mover of the run at once, so whichever holds the group cannot release it.
    for (const disk of run.status?.disks ?? []) {
      const mover = await e2e.kubelet.started(disk.jobName ?? '');
      process.kill(-mover.pid, 'SIGKILL');
    }
    const failed = await e2e.waitForRun('vm2-killed-mover', (r) => ['True', 'False'].includes(condition(r, 'CleanedUp')?.status ?? '') && condition(r, 'CleanedUp')?.reason !== 'CleaningUp', 'the failed run cleaned up', 60_000);
    expect(failed.status?.phase).toBe('Failed');
    expect(condition(failed, 'Ready')?.reason).toBe('ExportFailed');
    expect(condition(failed, 'CleanedUp')?.status).toBe('True');
    await noLeftoversOnNutanix(e2e, 1);
  }, 90_000);

  it('never blocks deletion forever: with Prism down, the finalizer goes after the deadline with a Warning Event naming what may remain', async () => {
    await e2e.createRun('vm2-abandoned', byHand('vm-0002'));
    const run = await untilExporting(e2e, 'vm2-abandoned');
    const uid = z.object({ metadata: z.object({ uid: z.string() }) }).parse(await e2e.api.get(vmBackupRunType, e2e.namespace, 'vm2-abandoned', AbortSignal.timeout(10_000))).metadata.uid;
    const recoveryPoint = run.status?.recoveryPointIds?.[0] ?? '';
    await e2e.sim.admin.addFaults([{ kind: 'unavailable', match: { path: '^/api/' }, count: 1_000_000 }]);
    try {
      await e2e.api.delete(vmBackupRunType, e2e.namespace, 'vm2-abandoned', AbortSignal.timeout(10_000));
      // The operator runs with SENDENSE_RUN_DELETION_DEADLINE=4s.
      for (let i = 0; i < 240 && (await e2e.getRun('vm2-abandoned')); i++) await sleep(250);
      expect(await e2e.getRun('vm2-abandoned')).toBeUndefined();
      const events = z.array(z.looseObject({ reason: z.string().optional(), note: z.string().optional(), regarding: z.looseObject({ name: z.string().optional() }).optional() }));
      const warnings = events.parse((await e2e.api.list(eventType, e2e.namespace, AbortSignal.timeout(10_000))).items).filter((e) => e.regarding?.name === 'vm2-abandoned' && e.reason === 'CleanupAbandoned');
      expect(warnings).toHaveLength(1);
      expect(warnings[0]?.note).toContain(recoveryPoint);
    } finally {
      await e2e.sim.admin.clearFaults();
    }
    // What the Event asks the admin to do by hand; the movers could not release their groups with Prism down either.
    const prism = createPrismClient({ endpoint: e2e.sim.endpoint, username: e2e.sim.username, password: e2e.sim.password, caPem: e2e.sim.caPem });
    try {
      await prism.releaseExportVolumeGroups(uid, AbortSignal.timeout(30_000));
      await prism.deleteRecoveryPoint(recoveryPoint, AbortSignal.timeout(30_000));
    } finally {
      await prism.close();
    }
    await noLeftoversOnNutanix(e2e, 1);
  });
});
