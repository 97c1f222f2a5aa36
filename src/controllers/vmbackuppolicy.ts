/**
 * VMBackupPolicy controller: resolves the selector against the shared VM inventory of the policy's
 * NutanixCluster, creates one VMBackupRun per selected VM per cron tick, and prunes the policy's run history.
 *
 * Scheduling is computed from persisted status (lastScheduleTime, lastSkippedSchedule), never from an in-memory
 * timer, so a restarted or new leader neither loses a tick nor replays a backlog: only the newest missed tick can
 * start runs, and only within spec.startingDeadlineSeconds (operator-anchors §2 pains 3 and 4). Run names are
 * deterministic per (policy, VM, tick) and created only when absent, so a retried reconcile never duplicates a run.
 * Restore-point retention is not applied here (the operator never mounts the repository): the run controller passes
 * the policy's spec.retention to the commit Job, which prunes the VM's points right after committing one.
 */
import { createHash } from 'node:crypto';
import { Cron } from 'croner';
import { z } from 'zod';
import { groupVersion, type Condition } from '../crds/common.ts';
import { nutanixCluster } from '../crds/nutanix-cluster.ts';
import { vmBackupPolicy, type VMBackupPolicy, type VMBackupPolicySpec, type VMBackupPolicyStatus } from '../crds/vm-backup-policy.ts';
import { vmBackupRun, type RunPhase, type VMBackupRun, type VMBackupRunSpec } from '../crds/vm-backup-run.ts';
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import { setCondition } from '../operator/conditions.ts';
import type { ControllerDefinition, ReconcileContext, ReconcileRequest, ReconcileResult } from '../operator/controller.ts';
import { EventKind } from '../operator/events.ts';
import { objectKey, type Informer } from '../operator/informer.ts';
import type { VmInventory } from '../operator/inventory.ts';
import { kubeStatusOf, type KubeObject } from '../operator/kube.ts';
import { nutanixClusterType, secretType, vmBackupPolicyType, vmBackupRunType } from '../operator/resources.ts';
import { patchStatus } from '../operator/status.ts';
import { rfc3339 } from '../operator/time.ts';
import type { Vm } from '../prism/types.ts';
import { resolveConnection } from './nutanixcluster.ts';

export const policyLabel = 'backup.sendense.io/policy';
export const vmUuidLabel = 'backup.sendense.io/vm-uuid';
export const scheduleTimeAnnotation = 'backup.sendense.io/schedule-time';

export const ConditionType = { Ready: 'Ready' } as const;

export const Reason = {
  Scheduled: 'Scheduled',
  Suspended: 'Suspended',
  InvalidSchedule: 'InvalidSchedule',
  InvalidTimeZone: 'InvalidTimeZone',
  ClusterNotFound: 'ClusterNotFound',
  ClusterNotReady: 'ClusterNotReady',
  InventoryUnavailable: 'InventoryUnavailable',
  NoVMsSelected: 'NoVMsSelected',
  VMNotFound: 'VMNotFound',
} as const;

/** Names in status.protectedVMs; protectedVMCount has the total. */
const maxListedVms = 100;
/** Scheduled a little after the tick, so the reconcile's clock is past it. */
const tickSlackMs = 50;
/** Longest requeue: timers beyond 2^31 ms fire at once in Node, and a far tick is simply recomputed then. */
const maxRequeueMs = 3_600_000;

export interface VMBackupPolicyControllerOptions {
  /** The VM inventory shared with every other policy of the operator. */
  inventory: VmInventory;
}

export function vmBackupPolicyController(options: VMBackupPolicyControllerOptions): ControllerDefinition {
  const clusterVerdicts = new Map<string, string>();
  return {
    name: 'vmbackuppolicy',
    for: vmBackupPolicyType,
    owns: [vmBackupRunType],
    watches: [
      {
        type: nutanixClusterType,
        // Every rediscovery rewrites the cluster's status; waking hundreds of policies for that alone would queue a
        // changed policy behind them (issue 5). Only a new spec or a new Ready verdict reaches the policies; a
        // deleted cluster is noticed at each policy's next tick or resync.
        map: (cluster, policies) => {
          const key = objectKey(cluster.metadata.namespace, cluster.metadata.name);
          const verdict = clusterVerdict(cluster);
          if (clusterVerdicts.get(key) === verdict) return [];
          clusterVerdicts.set(key, verdict);
          return policiesOfCluster(policies, cluster.metadata.namespace, [cluster.metadata.name]);
        },
      },
      { type: secretType, map: policiesInNamespaceOf },
    ],
    reconcile: (request, context) => reconcilePolicy(request, context, options.inventory),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Schedule math (pure)

export type ScheduleProblem = { reason: typeof Reason.InvalidSchedule | typeof Reason.InvalidTimeZone; message: string };

/** The policy's cron, or why it is unusable (a message naming the field and the fix). */
export function parseSchedule(schedule: string, timeZone: string | undefined): { cron: Cron } | { problem: ScheduleProblem } {
  if (timeZone !== undefined) {
    try {
      new Intl.DateTimeFormat('en-US', { timeZone });
    } catch {
      return { problem: { reason: Reason.InvalidTimeZone, message: `spec.timeZone: "${timeZone}" is not an IANA time zone; use e.g. Europe/Berlin or UTC, or remove the field for UTC` } };
    }
  }
  try {
    const cron = new Cron(schedule, { timezone: timeZone ?? 'UTC', mode: '5-or-6-parts', paused: true });
    if (cron.nextRun(new Date()) === null) throw new Error('it never fires');
    return { cron };
  } catch (err) {
    const detail = err instanceof Error ? err.message.replace(/^CronPattern: /, '') : String(err);
    return {
      problem: {
        reason: Reason.InvalidSchedule,
        message: `spec.schedule: "${schedule}" is not a usable cron expression (${detail}); use five fields (minute hour day-of-month month day-of-week, e.g. "30 1 * * *"), six with leading seconds, or @daily`,
      },
    };
  }
}

export type ScheduleDecision =
  | { action: 'wait'; next: Date | null }
  /** Start runs for `tick`; `missed` older ticks since the last handled one are never run (capped count). */
  | { action: 'run'; tick: Date; missed: number; next: Date | null }
  | { action: 'skip'; tick: Date; reason: 'Suspended' | 'MissedStartingDeadline'; missed: number; next: Date | null };

export interface ScheduleInput {
  cron: Cron;
  now: Date;
  /** Newest tick already handled (runs started or skip recorded), else the policy's creation time. */
  handledUntil: Date;
  startingDeadlineMs: number;
  suspend: boolean;
  /**
   * The persisted status still says Suspended (Ready reason): this is the first reconcile after un-suspending, so
   * a tick that passed before it was one missed while suspended, even if no reconcile recorded it then.
   */
  resuming: boolean;
}

const missedCountCap = 100;

/**
 * What to do now: the newest tick in (handledUntil, now] is the only candidate; it runs when not suspended and at
 * most `startingDeadlineMs` late, and is recorded as skipped otherwise. Older missed ticks are only counted.
 */
export function decideSchedule(input: ScheduleInput): ScheduleDecision {
  const { cron, now, handledUntil } = input;
  const next = cron.nextRun(now);
  const [newest] = cron.previousRuns(1, new Date(now.getTime() + 1));
  if (!newest || newest.getTime() <= handledUntil.getTime()) return { action: 'wait', next };
  const missed = cron.previousRuns(missedCountCap, newest).filter((t) => t.getTime() > handledUntil.getTime()).length;
  if (input.suspend || input.resuming) return { action: 'skip', tick: newest, reason: 'Suspended', missed, next };
  if (now.getTime() - newest.getTime() > input.startingDeadlineMs) return { action: 'skip', tick: newest, reason: 'MissedStartingDeadline', missed, next };
  return { action: 'run', tick: newest, missed, next };
}

/** max(lastScheduleTime, lastSkippedSchedule.scheduleTime), else the policy's creation (a new policy never catches up). */
export function handledUntil(status: VMBackupPolicyStatus | undefined, createdAt: Date): Date {
  const times = [status?.lastScheduleTime, status?.lastSkippedSchedule?.scheduleTime].filter((t): t is string => t !== undefined).map((t) => new Date(t).getTime());
  return times.length > 0 ? new Date(Math.max(...times)) : createdAt;
}

// ---------------------------------------------------------------------------------------------------------------
// Selection (pure)

/** A glob on the whole name: * any run, ? one character, [abc] / [a-z] / [!abc] one of a set; all else literal. */
export function globToRegExp(glob: string): RegExp {
  let source = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob.charAt(i);
    if (c === '*') source += '.*';
    else if (c === '?') source += '.';
    else if (c === '[' && glob.indexOf(']', i + 2) > 0) {
      const end = glob.indexOf(']', i + 2);
      const body = glob.slice(i + 1, end).replace(/\\/g, '\\\\');
      source += body.startsWith('!') ? `[^${body.slice(1)}]` : `[${body}]`;
      i = end;
    } else source += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  }
  return new RegExp(`^${source}$`, 's');
}

type Criteria = Omit<VMBackupPolicySpec['selector'], 'exclude'>;

function matches(vm: Vm, criteria: Criteria, pattern: RegExp | undefined): boolean {
  if (criteria.vmNames?.includes(vm.name)) return true;
  if (criteria.vmUUIDs?.some((u) => u.toLowerCase() === vm.uuid.toLowerCase())) return true;
  if (pattern?.test(vm.name)) return true;
  const categories = Object.entries(criteria.categories ?? {});
  return categories.length > 0 && categories.every(([key, values]) => vm.categories[key] !== undefined && values.includes(vm.categories[key]));
}

export interface Selection {
  /** Selected VMs, sorted by name then uuid. */
  vms: Vm[];
  /** Named VMs (by name or uuid) that do not exist, as `field: value`, e.g. spec.selector.vmNames[2]: db-09. */
  missing: string[];
}

/** Union of the include criteria, minus anything the excludes match. */
export function selectVms(vms: readonly Vm[], selector: VMBackupPolicySpec['selector']): Selection {
  const { exclude, ...include } = selector;
  const includePattern = include.namePattern === undefined ? undefined : globToRegExp(include.namePattern);
  const excludePattern = exclude?.namePattern === undefined ? undefined : globToRegExp(exclude.namePattern);
  const selected = vms.filter((vm) => matches(vm, include, includePattern) && !(exclude && matches(vm, exclude, excludePattern)));
  selected.sort((a, b) => a.name.localeCompare(b.name) || a.uuid.localeCompare(b.uuid));
  const names = new Set(vms.map((vm) => vm.name));
  const uuids = new Set(vms.map((vm) => vm.uuid.toLowerCase()));
  const missing = [
    ...(include.vmNames ?? []).flatMap((name, i) => (names.has(name) ? [] : [`spec.selector.vmNames[${i}]: ${name}`])),
    ...(include.vmUUIDs ?? []).flatMap((uuid, i) => (uuids.has(uuid.toLowerCase()) ? [] : [`spec.selector.vmUUIDs[${i}]: ${uuid}`])),
  ];
  return { vms: selected, missing };
}

// ---------------------------------------------------------------------------------------------------------------
// Runs (pure)

const terminalPhases: readonly RunPhase[] = ['Succeeded', 'PartiallyFailed', 'Failed'];

export function isActive(run: VMBackupRun): boolean {
  return run.metadata.deletionTimestamp === undefined && !terminalPhases.includes(run.status?.phase ?? 'Pending');
}

/** The VM a run backs up (the label the policy sets, else what the run resolved or was given). */
export function runVmUuid(run: VMBackupRun): string | undefined {
  return (run.metadata.labels?.[vmUuidLabel] ?? run.status?.vm?.uuid ?? run.spec.vm.uuid)?.toLowerCase();
}

/**
 * `<policy>-<first 8 hex of the VM uuid>-<tick in unix seconds>`: unique per (policy, VM, tick) and at most 63
 * characters, so Job names derived from it stay valid; a long policy name is cut and keeps a hash of the whole.
 */
export function runName(policyName: string, vmUuid: string, tick: Date): string {
  const suffix = `-${vmUuid.replace(/-/g, '').slice(0, 8).toLowerCase()}-${Math.floor(tick.getTime() / 1000)}`;
  const room = 63 - suffix.length;
  const prefix = policyName.length <= room ? policyName : `${policyName.slice(0, room - 7).replace(/[-.]+$/, '')}-${createHash('sha256').update(policyName).digest('hex').slice(0, 6)}`;
  return prefix + suffix;
}

/** Label value for the policy name (label values are at most 63 characters). */
export function policyLabelValue(policyName: string): string {
  return policyName.length <= 63 ? policyName : `${policyName.slice(0, 56).replace(/[-.]+$/, '')}-${createHash('sha256').update(policyName).digest('hex').slice(0, 6)}`;
}

type LastSuccess = NonNullable<VMBackupPolicyStatus['lastSuccessfulRuns']>[number];

/** `full` when no full of this VM is on record, or the newest is `everyDays` old, or `everyRuns` is reached. */
export function runTypeFor(last: LastSuccess | undefined, fullBackup: VMBackupPolicySpec['fullBackup'], now: Date): VMBackupRunSpec['type'] {
  if (!last?.lastFullTime) return 'full';
  if (now.getTime() - new Date(last.lastFullTime).getTime() >= fullBackup.everyDays * 86_400_000) return 'full';
  if (fullBackup.everyRuns !== undefined && (last.incrementalsSinceFull ?? 0) + 1 >= fullBackup.everyRuns) return 'full';
  return 'auto';
}

/** Folds newly succeeded runs (oldest first) into the per-VM record; unchanged entries keep their identity. */
export function recordSuccesses(previous: readonly LastSuccess[], runs: readonly VMBackupRun[]): LastSuccess[] {
  const byVm = new Map(previous.map((entry) => [entry.vmUUID, entry]));
  const succeeded = runs
    .filter((r) => r.status?.phase === 'Succeeded' && r.status.completionTime !== undefined && runVmUuid(r) !== undefined)
    .sort((a, b) => (a.status?.completionTime ?? '').localeCompare(b.status?.completionTime ?? ''));
  for (const run of succeeded) {
    const vmUUID = runVmUuid(run) ?? '';
    const completionTime = run.status?.completionTime ?? '';
    const before = byVm.get(vmUUID);
    if (before && before.completionTime >= completionTime) continue;
    const full = run.status?.backupType === 'Full';
    byVm.set(vmUUID, {
      vmUUID,
      vmName: run.status?.vm?.name ?? run.spec.vm.name ?? before?.vmName ?? '',
      runName: run.metadata.name,
      completionTime,
      ...(run.status?.pointId ? { pointId: run.status.pointId } : {}),
      ...(run.status?.backupType ? { backupType: run.status.backupType } : {}),
      ...(full ? { lastFullTime: completionTime, incrementalsSinceFull: 0 } : {}),
      ...(!full && before?.lastFullTime ? { lastFullTime: before.lastFullTime, incrementalsSinceFull: (before.incrementalsSinceFull ?? 0) + 1 } : {}),
    });
  }
  return [...byVm.values()].sort((a, b) => a.vmUUID.localeCompare(b.vmUUID));
}

/**
 * Finished runs beyond the history limits, per VM, newest kept; active runs are never chosen. The newest successful
 * run of a VM is kept even with a limit of 0: deleting a run deletes its recovery point on Nutanix, and that one is
 * the base of the VM's next incremental.
 */
export function runsBeyondHistory(runs: readonly VMBackupRun[], limits: { successful: number; failed: number }): VMBackupRun[] {
  const finishedAt = (r: VMBackupRun): string => r.status?.completionTime ?? r.metadata.creationTimestamp ?? '';
  const groups = new Map<string, VMBackupRun[]>();
  for (const run of runs) {
    const phase = run.status?.phase;
    if (run.metadata.deletionTimestamp !== undefined || phase === undefined || !terminalPhases.includes(phase)) continue;
    const key = `${runVmUuid(run) ?? ''}/${phase === 'Succeeded' ? 'successful' : 'failed'}`;
    groups.set(key, [...(groups.get(key) ?? []), run]);
  }
  const doomed: VMBackupRun[] = [];
  for (const [key, group] of groups) {
    const limit = key.endsWith('/successful') ? Math.max(1, limits.successful) : limits.failed;
    group.sort((a, b) => finishedAt(b).localeCompare(finishedAt(a)) || b.metadata.name.localeCompare(a.metadata.name));
    doomed.push(...group.slice(limit));
  }
  return doomed;
}

// ---------------------------------------------------------------------------------------------------------------
// Reconcile

const readyOfCluster = z.looseObject({ status: z.looseObject({ conditions: z.array(z.looseObject({ type: z.string(), status: z.string(), reason: z.string() })).optional() }).optional() });

/** What policies care about in a NutanixCluster: its spec (generation) and its Ready verdict. */
function clusterVerdict(cluster: KubeObject): string {
  const parsed = readyOfCluster.safeParse(cluster);
  const ready = parsed.success ? parsed.data.status?.conditions?.find((c) => c.type === 'Ready') : undefined;
  return JSON.stringify([cluster.metadata.uid, cluster.metadata.generation, cluster.metadata.deletionTimestamp, ready?.status, ready?.reason]);
}

function policiesOfCluster(policies: Informer, namespace: string | undefined, clusterNames: string[]): string[] {
  const keys: string[] = [];
  for (const raw of policies.list()) {
    const parsed = vmBackupPolicy.safeParse(raw);
    if (parsed.success && raw.metadata.namespace === namespace && clusterNames.includes(parsed.data.spec.clusterRef.name)) {
      keys.push(objectKey(raw.metadata.namespace, raw.metadata.name));
    }
  }
  return keys;
}

/**
 * A changed Secret reconciles every policy of its namespace: the map sees only the policy cache, not which cluster
 * uses the Secret, and Secrets change rarely. A rotated credential then reaches the inventory (keyed by it) at once.
 */
function policiesInNamespaceOf(secret: KubeObject, policies: Informer): string[] {
  return policies
    .list()
    .filter((p) => p.metadata.namespace === secret.metadata.namespace)
    .map((p) => objectKey(p.metadata.namespace, p.metadata.name));
}

interface Outcome {
  ready: { status: 'True' | 'False'; reason: string; message: string };
  status: Partial<VMBackupPolicyStatus>;
}

async function reconcilePolicy(request: ReconcileRequest, context: ReconcileContext, inventory: VmInventory): Promise<ReconcileResult> {
  const raw = context.cache(vmBackupPolicyType).get(request.namespace, request.name);
  if (!raw || raw.metadata.deletionTimestamp) return {}; // its runs go with it by garbage collection (ownerReferences)
  const parsed = vmBackupPolicy.safeParse(raw);
  if (!parsed.success) {
    throw new AppError(ErrorCode.InvalidInput, `VMBackupPolicy ${objectKey(request.namespace, request.name)} does not match the schema: ${z.prettifyError(parsed.error)}`, {
      hint: 'fix the fields named above (kubectl edit vmbp)',
    });
  }
  const policy = parsed.data;
  const now = new Date();

  const schedule = parseSchedule(policy.spec.schedule, policy.spec.timeZone);
  if ('problem' in schedule) {
    await publish(context, raw, policy, { ready: { status: 'False', ...schedule.problem }, status: {} }, now);
    return {}; // waits for a spec change
  }

  const selected = await resolveSelection(context, policy, inventory);
  if ('outcome' in selected) {
    await publish(context, raw, policy, selected.outcome, now);
    if (selected.retry) throw selected.retry;
    return {};
  }
  const selection = selected.selection;

  const runs = context
    .cache(vmBackupRunType)
    .list()
    .filter((r) => r.metadata.ownerReferences?.some((o) => o.controller === true && o.uid === policy.metadata.uid))
    .flatMap((r) => {
      const run = vmBackupRun.safeParse(r);
      return run.success ? [run.data] : [];
    });
  const lastSuccessfulRuns = recordSuccesses(policy.status?.lastSuccessfulRuns ?? [], runs);

  const decision = decideSchedule({
    cron: schedule.cron,
    now,
    handledUntil: handledUntil(policy.status, new Date(policy.metadata.creationTimestamp ?? now.toISOString())),
    startingDeadlineMs: policy.spec.startingDeadlineSeconds * 1000,
    suspend: policy.spec.suspend,
    resuming: policy.status?.conditions?.find((c) => c.type === ConditionType.Ready)?.reason === Reason.Suspended,
  });
  const status: Partial<VMBackupPolicyStatus> = {
    protectedVMCount: selection.vms.length,
    protectedVMs: selection.vms.slice(0, maxListedVms).map((vm) => ({ name: vm.name, uuid: vm.uuid })),
    lastSuccessfulRuns,
    ...(decision.next ? { nextScheduleTime: rfc3339(decision.next) } : {}),
  };
  if (decision.action === 'run') {
    await startRuns(context, raw, policy, selection.vms, decision.tick, lastSuccessfulRuns, now);
    status.lastScheduleTime = rfc3339(decision.tick);
    if (decision.missed > 0) {
      const note = `${decision.missed}${decision.missed >= missedCountCap ? '+' : ''} earlier tick(s) were missed (operator down?); only the newest, ${rfc3339(decision.tick)}, runs`;
      await context.events.record({ regarding: raw, type: EventKind.Warning, reason: 'MissedSchedules', action: 'Schedule', note }, context.signal);
    }
  } else if (decision.action === 'skip') {
    const message =
      decision.reason === 'Suspended'
        ? `tick ${rfc3339(decision.tick)} not run: spec.suspend is true`
        : `tick ${rfc3339(decision.tick)} not run: it is more than spec.startingDeadlineSeconds (${policy.spec.startingDeadlineSeconds}) late; the next tick runs normally`;
    status.lastSkippedSchedule = { scheduleTime: rfc3339(decision.tick), reason: decision.reason, message };
    if (decision.reason === 'MissedStartingDeadline') {
      await context.events.record({ regarding: raw, type: EventKind.Warning, reason: 'MissedStartingDeadline', action: 'Schedule', note: message }, context.signal);
    }
  }

  const ready = readiness(policy, selection, decision.next);
  await publish(context, raw, policy, { ready, status }, now);
  await pruneHistory(context, policy, runs);
  return decision.next ? { requeueAfterMs: Math.min(maxRequeueMs, Math.max(0, decision.next.getTime() - Date.now()) + tickSlackMs) } : {};
}

type SelectionResult = { selection: Selection } | { outcome: Outcome; retry?: AppError };

async function resolveSelection(context: ReconcileContext, policy: VMBackupPolicy, inventory: VmInventory): Promise<SelectionResult> {
  const namespace = policy.metadata.namespace ?? '';
  const clusterName = policy.spec.clusterRef.name;
  const notReady = (reason: string, message: string) => ({ outcome: { ready: { status: 'False' as const, reason, message }, status: {} } });
  const rawCluster = context.cache(nutanixClusterType).get(namespace, clusterName);
  if (!rawCluster) {
    return notReady(Reason.ClusterNotFound, `spec.clusterRef.name: NutanixCluster ${namespace}/${clusterName} does not exist; create it or name an existing one`);
  }
  const cluster = nutanixCluster.safeParse(rawCluster);
  if (!cluster.success) return notReady(Reason.ClusterNotReady, `NutanixCluster ${clusterName} does not match its schema; see its Ready condition`);
  const resolved = resolveConnection(cluster.data, context.cache(secretType));
  if ('verdict' in resolved) return notReady(Reason.ClusterNotReady, `NutanixCluster ${clusterName}: ${resolved.verdict.ready.message}`);
  const owner = objectKey(namespace, clusterName);
  try {
    const snapshot = await inventory.vms(owner, resolved.connection, context.prismClients.get(owner, resolved.connection), context.signal);
    return { selection: selectVms(snapshot.vms, policy.spec.selector) };
  } catch (err) {
    if (context.signal.aborted) throw err;
    const appErr = isAppError(err) ? err : new AppError(ErrorCode.Unavailable, err instanceof Error ? err.message : String(err), { cause: err });
    const message = `listing the VMs of NutanixCluster ${clusterName} failed: ${appErr.oneLine()}`;
    return {
      ...notReady(Reason.InventoryUnavailable, message),
      retry: new AppError(appErr.code, message, { retryable: true, cause: err, ...(appErr.retryAfterMs === undefined ? {} : { retryAfterMs: appErr.retryAfterMs }) }),
    };
  }
}

function readiness(policy: VMBackupPolicy, selection: Selection, next: Date | null): Outcome['ready'] {
  const when = next ? `next tick ${rfc3339(next)}` : 'the schedule has no further ticks';
  if (selection.vms.length === 0) {
    return { status: 'False', reason: Reason.NoVMsSelected, message: `spec.selector matches no VM${selection.missing.length ? ` (${selection.missing.join('; ')} not found)` : ''}; fix the selector or the VM names` };
  }
  if (selection.missing.length > 0) {
    return { status: 'False', reason: Reason.VMNotFound, message: `not found in Prism: ${selection.missing.join('; ')}; fix or remove them. ${selection.vms.length} other VM(s) are protected, ${when}` };
  }
  if (policy.spec.suspend) return { status: 'True', reason: Reason.Suspended, message: `spec.suspend is true: no new runs for ${selection.vms.length} VM(s)` };
  return { status: 'True', reason: Reason.Scheduled, message: `${selection.vms.length} VM(s) protected, ${when}` };
}

/** One run per VM for `tick`, created only when absent; Forbid skips a VM with an active run (an Event says so). */
async function startRuns(context: ReconcileContext, raw: KubeObject, policy: VMBackupPolicy, vms: readonly Vm[], tick: Date, lastSuccess: readonly LastSuccess[], now: Date): Promise<void> {
  const namespace = policy.metadata.namespace ?? '';
  const runCache = context.cache(vmBackupRunType);
  // Only runs that may be of these VMs are parsed: the namespace can hold thousands of runs of other policies.
  const uuids = new Set(vms.map((vm) => vm.uuid.toLowerCase()));
  const allRuns = runCache
    .list()
    .filter((r) => {
      const label = r.metadata.labels?.[vmUuidLabel];
      return label === undefined || uuids.has(label);
    })
    .flatMap((r) => {
      const run = vmBackupRun.safeParse(r);
      return run.success ? [run.data] : [];
    });
  const created: string[] = [];
  const skipped: string[] = [];
  for (const vm of vms) {
    const name = runName(policy.metadata.name, vm.uuid, tick);
    if (runCache.get(namespace, name)) continue; // this tick's run exists: a retried reconcile
    const uuid = vm.uuid.toLowerCase();
    const active = allRuns.find((r) => runVmUuid(r) === uuid && isActive(r));
    if (policy.spec.concurrencyPolicy === 'Forbid' && active) {
      skipped.push(`${vm.name} (run ${active.metadata.name} is still ${active.status?.phase ?? 'Pending'})`);
      continue;
    }
    const spec: VMBackupRunSpec = {
      policyRef: { name: policy.metadata.name },
      vm: { name: vm.name, uuid: vm.uuid },
      type: runTypeFor(lastSuccess.find((l) => l.vmUUID === uuid), policy.spec.fullBackup, now),
      consistency: policy.spec.consistency,
    };
    const body = {
      apiVersion: groupVersion,
      kind: 'VMBackupRun',
      metadata: {
        name,
        namespace,
        // Only our own labels: copying the policy's would copy Argo CD / Flux tracking labels, and they would prune the runs.
        labels: { [policyLabel]: policyLabelValue(policy.metadata.name), [vmUuidLabel]: uuid },
        annotations: { [scheduleTimeAnnotation]: rfc3339(tick) },
        ownerReferences: [{ apiVersion: groupVersion, kind: 'VMBackupPolicy', name: policy.metadata.name, uid: policy.metadata.uid, controller: true, blockOwnerDeletion: true }],
      },
      spec,
    };
    try {
      await context.api.create(vmBackupRunType, namespace, body, context.signal);
      created.push(`${name} (${spec.type})`);
    } catch (err) {
      if (kubeStatusOf(err) !== 409) throw err;
    }
  }
  if (created.length > 0) {
    context.log.info({ tick: rfc3339(tick), runs: created }, 'scheduled runs created');
    await context.events.record({ regarding: raw, type: EventKind.Normal, reason: 'RunsCreated', action: 'Schedule', note: `tick ${rfc3339(tick)}: ${created.join(', ')}` }, context.signal);
  }
  if (skipped.length > 0) {
    await context.events.record(
      { regarding: raw, type: EventKind.Warning, reason: 'RunSkipped', action: 'Schedule', note: `tick ${rfc3339(tick)} skipped for ${skipped.join(', ')}: spec.concurrencyPolicy is Forbid` },
      context.signal,
    );
  }
}

async function pruneHistory(context: ReconcileContext, policy: VMBackupPolicy, runs: readonly VMBackupRun[]): Promise<void> {
  const doomed = runsBeyondHistory(runs, { successful: policy.spec.successfulRunsHistoryLimit, failed: policy.spec.failedRunsHistoryLimit });
  for (const run of doomed) {
    try {
      await context.api.delete(vmBackupRunType, run.metadata.namespace ?? '', run.metadata.name, context.signal);
      context.log.info({ run: run.metadata.name, phase: run.status?.phase }, 'run beyond the history limit deleted');
    } catch (err) {
      if (kubeStatusOf(err) !== 404) throw err;
    }
  }
}

/** Writes status only when something changed, so owned-run events do not turn into a stream of status writes. */
async function publish(context: ReconcileContext, raw: KubeObject, policy: VMBackupPolicy, outcome: Outcome, now: Date): Promise<void> {
  const generation = policy.metadata.generation;
  const before = policy.status ?? {};
  const conditions: Condition[] = setCondition(before.conditions, { type: ConditionType.Ready, ...outcome.ready }, generation, now);
  const next: VMBackupPolicyStatus = { ...before, ...outcome.status, conditions, ...(generation === undefined ? {} : { observedGeneration: generation }) };
  if (JSON.stringify(next) === JSON.stringify(before)) return;
  await patchStatus(context.api, vmBackupPolicyType, raw, next, context.signal);
  const previous = before.conditions?.find((c) => c.type === ConditionType.Ready);
  if (previous?.status !== outcome.ready.status || previous.reason !== outcome.ready.reason) {
    context.log.info({ ready: outcome.ready.status, reason: outcome.ready.reason }, outcome.ready.message);
    const ok = outcome.ready.status === 'True';
    await context.events.record({ regarding: raw, type: ok ? EventKind.Normal : EventKind.Warning, reason: outcome.ready.reason, action: 'Reconcile', note: outcome.ready.message }, context.signal);
  }
}
