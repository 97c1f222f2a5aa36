/**
 * The decisions of the VMBackupRun controller that need no API: which run a new run must wait for, which earlier
 * run it chains onto (or why it is a full), what a Job's state means, and the printer-column strings. Pure, so the
 * state machine's rules are unit-tested without an apiserver (docs/controllers.md).
 */
import { z } from 'zod';
import type { VMBackupRun } from '../crds/vm-backup-run.ts';
import { formatBytes } from '../lib/size.ts';
import { TerminationMessageSchema } from '../jobs/contract.ts';

export const terminalPhases: readonly string[] = ['Succeeded', 'PartiallyFailed', 'Failed'];
/** Phases whose restore point is committed: such a run can be the base of the next one. */
export const committedPhases: readonly string[] = ['Succeeded', 'PartiallyFailed'];

export function isTerminal(run: VMBackupRun): boolean {
  return terminalPhases.includes(run.status?.phase ?? 'Pending');
}

/** Runs are ordered by creation, then name: the older one goes first when two want the same VM. */
function olderThan(a: VMBackupRun, b: VMBackupRun): boolean {
  const ta = a.metadata.creationTimestamp ?? '';
  const tb = b.metadata.creationTimestamp ?? '';
  return ta !== tb ? ta < tb : a.metadata.name < b.metadata.name;
}

/** Whether `other` is about the VM `vm` (resolved in its status, or named in its spec before it resolved). */
function sameVm(other: VMBackupRun, vm: { uuid: string; name: string }): boolean {
  if (other.status?.vm) return other.status.vm.uuid === vm.uuid;
  return other.spec.vm.uuid ? other.spec.vm.uuid === vm.uuid : other.spec.vm.name === vm.name;
}

/**
 * The run `run` has to wait for: a non-terminal run of the same VM that is past Pending or older than `run`.
 * Undefined when `run` may start.
 */
export function blockingRun(run: VMBackupRun, vm: { uuid: string; name: string }, runs: readonly VMBackupRun[]): VMBackupRun | undefined {
  return runs.find((other) => {
    if (other.metadata.name === run.metadata.name || isTerminal(other) || other.metadata.deletionTimestamp) return false;
    if (!sameVm(other, vm)) return false;
    const started = (other.status?.phase ?? 'Pending') !== 'Pending';
    return started || olderThan(other, run);
  });
}

/** Runs of one cluster that hold a VM slot (snapshotting, exporting or committing). */
export function busyRunsOfCluster(clusterName: string, runs: readonly VMBackupRun[], clusterOf: (run: VMBackupRun) => string | undefined): VMBackupRun[] {
  return runs.filter((r) => ['Snapshotting', 'Exporting', 'Finalizing'].includes(r.status?.phase ?? '') && clusterOf(r) === clusterName);
}

export interface RepositoryKey {
  claimName: string;
  path: string;
}

export interface BaseCandidate {
  runName: string;
  pointId: string;
  recoveryPointId: string;
  completionTime: string;
}

export interface BaseDecision {
  /** The run to chain onto; undefined means a full. */
  base?: BaseCandidate;
  /** Why a full, or on which point the incremental chains. */
  reason: string;
}

/** Committed runs of `vmUuid` into `repository`, newest first. */
export function committedRuns(vmUuid: string, repository: RepositoryKey, runs: readonly VMBackupRun[], repositoryOf: (run: VMBackupRun) => RepositoryKey | undefined): VMBackupRun[] {
  return runs
    .filter((r) => committedPhases.includes(r.status?.phase ?? '') && r.status?.vm?.uuid === vmUuid && r.status.pointId && r.status.completionTime)
    .filter((r) => {
      const key = repositoryOf(r);
      return key?.claimName === repository.claimName && key.path === repository.path;
    })
    .sort((a, b) => (b.status?.completionTime ?? '').localeCompare(a.status?.completionTime ?? ''));
}

/**
 * Full or incremental, before asking Nutanix whether the base recovery point still exists: `spec.type: full` (a
 * policy sets it when its full cadence is due, from its own status) or no earlier committed run make a full.
 */
export function chooseBase(type: 'auto' | 'full', history: readonly VMBackupRun[]): BaseDecision {
  if (type === 'full') return { reason: 'full backup requested (spec.type: full)' };
  const latest = history[0];
  const recoveryPointId = latest?.status?.recoveryPointIds?.[0];
  if (!latest?.status?.pointId || !recoveryPointId || !latest.status.completionTime) return { reason: 'first backup of this VM into this repository' };
  const base = { runName: latest.metadata.name, pointId: latest.status.pointId, recoveryPointId, completionTime: latest.status.completionTime };
  return { base, reason: `incremental on ${base.pointId} (run ${base.runName})` };
}

const jobCondition = z.looseObject({ type: z.string(), status: z.string(), reason: z.string().optional(), message: z.string().optional() });
export const jobStatusSchema = z.looseObject({
  metadata: z.looseObject({ name: z.string(), creationTimestamp: z.string().optional(), deletionTimestamp: z.string().optional() }),
  status: z
    .looseObject({ startTime: z.string().optional(), active: z.number().optional(), conditions: z.array(jobCondition).optional() })
    .optional(),
});

export type JobState =
  | { state: 'succeeded' }
  | { state: 'failed'; reason: string; message: string }
  | { state: 'running' }
  | { state: 'waiting'; sinceMs: number };

/** What a Job's status says; `now` measures how long a Job has waited to start. */
export function jobState(raw: unknown, now: Date): JobState {
  const job = jobStatusSchema.parse(raw);
  const conditions = job.status?.conditions ?? [];
  if (conditions.some((c) => c.type === 'Complete' && c.status === 'True')) return { state: 'succeeded' };
  const failed = conditions.find((c) => c.type === 'Failed' && c.status === 'True');
  if (failed) return { state: 'failed', reason: failed.reason ?? 'JobFailed', message: moverFailureMessage(failed.message ?? '') };
  if (job.status?.startTime || (job.status?.active ?? 0) > 0) return { state: 'running' };
  const created = Date.parse(job.metadata.creationTimestamp ?? '');
  return { state: 'waiting', sinceMs: Number.isNaN(created) ? 0 : now.getTime() - created };
}

/** A mover's termination message is JSON (src/jobs/contract.ts); its message and hint read better than the JSON. */
export function moverFailureMessage(text: string): string {
  try {
    const parsed = TerminationMessageSchema.safeParse(JSON.parse(text));
    if (parsed.success && parsed.data.kind === 'failure') return parsed.data.hint ? `${parsed.data.message} (${parsed.data.hint})` : parsed.data.message;
  } catch {
    // not JSON: the kubelet's fallback (log tail) or a plain message
  }
  return text.trim() || 'the Job failed without a message';
}

/** 2h3m, 4m10s, 12s: the DURATION column. */
export function formatDuration(ms: number): string {
  const seconds = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h > 0) return `${h}h${m}m`;
  if (m > 0) return `${m}m${s}s`;
  return `${s}s`;
}

export interface RunFigures {
  changedBytes: number;
  transferredBytes: number;
  durationMs: number;
}

/** The printer columns' strings and the data reduction ratio from the run's numbers. */
export function summarize(figures: RunFigures): { summary: { changed: string; throughput: string; duration: string }; dataReductionRatio?: number } {
  const seconds = figures.durationMs / 1000;
  const throughput = seconds > 0 ? `${formatBytes(Math.round(figures.transferredBytes / seconds))}/s` : '-';
  const ratio = figures.transferredBytes > 0 ? Math.round((figures.changedBytes / figures.transferredBytes) * 100) / 100 : undefined;
  return {
    summary: { changed: formatBytes(figures.changedBytes), throughput, duration: formatDuration(figures.durationMs) },
    ...(ratio === undefined ? {} : { dataReductionRatio: ratio }),
  };
}
