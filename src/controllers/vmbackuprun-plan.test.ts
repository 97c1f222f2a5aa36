import { describe, expect, it } from 'vitest';
import type { VMBackupRun, VMBackupRunStatus } from '../crds/vm-backup-run.ts';
import { blockingRun, chooseBase, committedRuns, formatDuration, jobState, moverFailureMessage, summarize } from './vmbackuprun-plan.ts';

const vm = { uuid: '11111111-2222-3333-4444-555555555555', name: 'db-1' };
const repo = { claimName: 'backups', path: '' };

function run(name: string, created: string, status?: VMBackupRunStatus, spec: Partial<VMBackupRun['spec']> = {}): VMBackupRun {
  return {
    apiVersion: 'backup.sendense.io/v1alpha1',
    kind: 'VMBackupRun',
    metadata: { name, namespace: 'ns', creationTimestamp: created },
    spec: { vm: { name: vm.name }, type: 'auto', clusterRef: { name: 'pc' }, repository: { persistentVolumeClaim: { claimName: 'backups', path: '' } }, ...spec },
    ...(status ? { status } : {}),
  };
}

function committed(name: string, completion: string, backupType: 'Full' | 'Incremental', phase: 'Succeeded' | 'PartiallyFailed' = 'Succeeded'): VMBackupRun {
  return run(name, completion, { phase, vm, pointId: `20261126T000000Z-${name.padEnd(6, '0').slice(0, 6)}`, recoveryPointIds: [`rp-${name}`], completionTime: completion, backupType });
}

describe('blockingRun', () => {
  const me = run('me', '2026-11-26T10:00:00Z');

  it('lets a run start when the other runs of the VM are finished', () => {
    expect(blockingRun(me, vm, [me, committed('old', '2026-11-25T10:00:00Z', 'Full'), run('failed', '2026-11-25T11:00:00Z', { phase: 'Failed', vm })])).toBeUndefined();
  });

  it('makes a run wait for a started run of the same VM, even a younger one', () => {
    const active = run('active', '2026-11-26T11:00:00Z', { phase: 'Exporting', vm });
    expect(blockingRun(me, vm, [me, active])?.metadata.name).toBe('active');
  });

  it('orders two pending runs of one VM by creation, so exactly one goes first', () => {
    const older = run('older', '2026-11-26T09:00:00Z');
    expect(blockingRun(me, vm, [me, older])?.metadata.name).toBe('older');
    expect(blockingRun(older, vm, [me, older])).toBeUndefined();
  });

  it('ignores runs of other VMs', () => {
    const other = run('other', '2026-11-26T09:00:00Z', { phase: 'Exporting', vm: { uuid: 'ffffffff-2222-3333-4444-555555555555', name: 'web' } });
    expect(blockingRun(me, vm, [me, other])).toBeUndefined();
  });
});

describe('chooseBase', () => {
  const history = committedRuns(vm.uuid, repo, [committed('a', '2026-11-24T00:00:00Z', 'Full'), committed('b', '2026-11-25T00:00:00Z', 'Incremental'), run('pending', '2026-11-26T00:00:00Z')], () => repo);

  it('chains onto the newest committed run of the VM in the same repository', () => {
    expect(history.map((r) => r.metadata.name)).toEqual(['b', 'a']);
    const decision = chooseBase('auto', history);
    expect(decision.base).toMatchObject({ runName: 'b', recoveryPointId: 'rp-b' });
    expect(decision.reason).toContain('incremental on');
  });

  it('ignores runs into another repository', () => {
    expect(committedRuns(vm.uuid, repo, [committed('a', '2026-11-24T00:00:00Z', 'Full')], () => ({ claimName: 'other', path: '' }))).toEqual([]);
  });

  it('makes a full, with its reason, for spec.type full or a first backup', () => {
    expect(chooseBase('full', history)).toEqual({ reason: 'full backup requested (spec.type: full)' });
    expect(chooseBase('auto', [])).toEqual({ reason: 'first backup of this VM into this repository' });
  });
});

describe('jobState', () => {
  const now = new Date('2026-11-26T12:00:00Z');
  const job = (status: Record<string, unknown> | undefined) => ({ metadata: { name: 'j', creationTimestamp: '2026-11-26T11:50:00Z' }, ...(status ? { status } : {}) });

  it('reads Complete, Failed with the mover message, running and waiting', () => {
    expect(jobState(job({ conditions: [{ type: 'Complete', status: 'True' }] }), now)).toEqual({ state: 'succeeded' });
    const failure = JSON.stringify({ kind: 'failure', code: 'NO_SPACE', message: 'repository full', hint: 'grow the PVC', exitCode: 1, retryable: false });
    expect(jobState(job({ conditions: [{ type: 'Failed', status: 'True', reason: 'BackoffLimitExceeded', message: failure }] }), now)).toEqual({
      state: 'failed',
      reason: 'BackoffLimitExceeded',
      message: 'repository full (grow the PVC)',
    });
    expect(jobState(job({ startTime: '2026-11-26T11:51:00Z', active: 1 }), now)).toEqual({ state: 'running' });
    expect(jobState(job(undefined), now)).toEqual({ state: 'waiting', sinceMs: 600_000 });
  });

  it('keeps a plain termination message as it is', () => {
    expect(moverFailureMessage('exit code 137\n')).toBe('exit code 137');
    expect(moverFailureMessage('')).toBe('the Job failed without a message');
  });
});

describe('summaries for the printer columns', () => {
  it('formats changed bytes, throughput, duration and the reduction ratio', () => {
    expect(summarize({ changedBytes: 64 * 1024 * 1024, transferredBytes: 32 * 1024 * 1024, durationMs: 4000 })).toEqual({
      summary: { changed: '64.0 MiB', throughput: '8.00 MiB/s', duration: '4s' },
      dataReductionRatio: 2,
    });
    expect(summarize({ changedBytes: 0, transferredBytes: 0, durationMs: 0 })).toEqual({ summary: { changed: '0 B', throughput: '-', duration: '0s' } });
    expect(formatDuration(130_000)).toBe('2m10s');
    expect(formatDuration(7_380_000)).toBe('2h3m');
  });
});
