/**
 * VMBackupRun controller: one backup of one VM, driven through Pending → Snapshotting → Exporting → Finalizing →
 * Succeeded | PartiallyFailed | Failed (docs/controllers.md). Level-triggered: every reconcile reads the run
 * fresh, looks at its Jobs and Prism, moves one step and records every external artifact (point id, recovery
 * point, Job names) in status before the next step, so a restarted operator continues from status and the Jobs.
 * The bytes move in per-disk export Jobs (src/jobs); they report into status.disks by JSON patch.
 */
import { z } from 'zod';
import type { Condition } from '../crds/common.ts';
import { nutanixCluster, type NutanixCluster } from '../crds/nutanix-cluster.ts';
import { vmBackupPolicy, type VMBackupPolicy } from '../crds/vm-backup-policy.ts';
import { vmBackupRun, type VMBackupRun, type VMBackupRunStatus } from '../crds/vm-backup-run.ts';
import { judgeObtained, planConsistency, type ConsistencyMode } from '../engine/consistency.ts';
import { deleteAttemptRecoveryPoints, recoveryPointName } from '../engine/cleanup.ts';
import { buildCleanupJob, buildCommitJob, buildDiskJob, diskJobName, jobLabels, jobName, type JobEnvironment, type OwnerRun } from '../jobs/job-spec.ts';
import type { CommitRequestInput, DiskRequestInput } from '../jobs/contract.ts';
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import { findCondition, setCondition, type ConditionInput } from '../operator/conditions.ts';
import { reasonFromCode, type ControllerDefinition, type ReconcileContext, type ReconcileRequest, type ReconcileResult } from '../operator/controller.ts';
import { EventKind } from '../operator/events.ts';
import { objectKey, type Informer } from '../operator/informer.ts';
import { PatchType, kubeStatusOf, type KubeObject } from '../operator/kube.ts';
import { jobType, nutanixClusterType, persistentVolumeClaimType, podType, secretType, vmBackupPolicyType, vmBackupRunType } from '../operator/resources.ts';
import { parseDuration, rfc3339 } from '../operator/time.ts';
import { Consistency, type PrismClient, type RecoveryPoint, type Vm } from '../prism/types.ts';
import { newPointId } from '../repository/layout.ts';
import { resolveConnection } from './nutanixcluster.ts';
import {
  blockingRun,
  busyRunsOfCluster,
  chooseBase,
  committedRuns,
  isTerminal,
  jobState,
  summarize,
  type RepositoryKey,
} from './vmbackuprun-plan.ts';

/** Held while the run may own something on Nutanix; removed when that is deleted (or abandoned after a deadline). */
export const runFinalizer = 'backup.sendense.io/recovery-points';
/** Label on export Jobs naming the NutanixCluster, so the disk concurrency limit counts Jobs across runs. */
export const clusterLabel = 'backup.sendense.io/cluster';

export const RunCondition = {
  /** True when the run succeeded; False with a CamelCase reason while running or after a failure. */
  Ready: 'Ready',
  /** kstatus-style terminal verdict: True (Succeeded or PartiallyFailed) or False (Failed). */
  Succeeded: 'Succeeded',
  /** True while a Pending run waits for something it names (another run of the VM, the cluster, the PVC). */
  Waiting: 'Waiting',
  /** After a failure or on deletion: whether the recovery point and the staging folder were removed. */
  CleanedUp: 'CleanedUp',
  /** False on a PartiallyFailed run: the previous base recovery point could not be deleted on Nutanix. */
  BaseRecoveryPointDeleted: 'BaseRecoveryPointDeleted',
} as const;

const moverSettingsSchema = z.object({
  image: z.string().min(1),
  imagePullPolicy: z.enum(['Always', 'IfNotPresent', 'Never']).optional(),
  resources: z.looseObject({}).optional(),
  activeDeadlineSeconds: z.coerce.number().int().positive().optional(),
  ttlSecondsAfterFinished: z.coerce.number().int().min(0).optional(),
  serviceAccount: z.string().min(1).optional(),
});
export type MoverSettings = z.infer<typeof moverSettingsSchema>;

/** The export Jobs' image and limits from the operator's environment (the chart sets SENDENSE_MOVER_*). */
export function moverSettingsFromEnv(env: NodeJS.ProcessEnv): MoverSettings {
  let resources: unknown;
  try {
    resources = env.SENDENSE_MOVER_RESOURCES ? JSON.parse(env.SENDENSE_MOVER_RESOURCES) : undefined;
  } catch {
    throw new AppError(ErrorCode.InvalidInput, 'SENDENSE_MOVER_RESOURCES is not JSON', { hint: 'set it to a core/v1 ResourceRequirements object as JSON (chart value mover.resources)' });
  }
  const parsed = moverSettingsSchema.safeParse({
    image: env.SENDENSE_MOVER_IMAGE || 'ghcr.io/sendense/sendense-nutanix:latest',
    imagePullPolicy: env.SENDENSE_MOVER_IMAGE_PULL_POLICY || undefined,
    resources,
    activeDeadlineSeconds: env.SENDENSE_MOVER_ACTIVE_DEADLINE_SECONDS || undefined,
    ttlSecondsAfterFinished: env.SENDENSE_MOVER_TTL_SECONDS_AFTER_FINISHED || undefined,
    serviceAccount: env.SENDENSE_MOVER_SERVICE_ACCOUNT || undefined,
  });
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new AppError(ErrorCode.InvalidInput, `SENDENSE_MOVER_${String(issue?.path[0] ?? '').replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}: ${issue?.message}`, {
      hint: 'fix the mover.* chart values',
    });
  }
  return parsed.data;
}

/** The iSCSI initiator of a run's movers: their export volume groups are attached to it. */
export function moverInitiatorName(runUid: string): string {
  return `iqn.2026-01.io.sendense:mover-${runUid}`;
}

/** Env of the deadlines (durations such as 10m), for operators that need other bounds than the defaults. */
const deadlineEnv = {
  jobStartDeadlineMs: 'SENDENSE_RUN_JOB_START_DEADLINE',
  deletionDeadlineMs: 'SENDENSE_RUN_DELETION_DEADLINE',
  cleanupDeadlineMs: 'SENDENSE_RUN_CLEANUP_DEADLINE',
} as const;

/** The controller's options from the operator's environment: the mover settings and optional deadlines. */
export function runControllerOptionsFromEnv(env: NodeJS.ProcessEnv): VMBackupRunControllerOptions {
  const options: VMBackupRunControllerOptions = { mover: moverSettingsFromEnv(env) };
  for (const [key, name] of Object.entries(deadlineEnv) as [keyof typeof deadlineEnv, string][]) {
    const text = env[name];
    if (text) options[key] = parseDuration(text, name);
  }
  return options;
}

export interface VMBackupRunControllerOptions {
  mover: MoverSettings;
  /** A Job that has not started this long after its creation fails the run (default 10 min). */
  jobStartDeadlineMs?: number;
  /** Deletion waits this long for Prism before the finalizer is removed anyway (default 10 min). */
  deletionDeadlineMs?: number;
  /** A failed run retries its clean-up this long before giving up (default 30 min). */
  cleanupDeadlineMs?: number;
  /** How often an active run is looked at even without Job events (default 5 s). */
  pollIntervalMs?: number;
  /** Progress patches of the movers (default 3 s). */
  progressIntervalSeconds?: number;
}

/** Everything a run needs from its policy or its own spec (the policy's full cadence reaches the run as spec.type). */
interface RunInputs {
  cluster: NutanixCluster;
  repository: RepositoryKey;
  consistency: ConsistencyMode;
  policy?: VMBackupPolicy;
}

type Step = ReconcileResult;

/** A run-level failure: the run goes to Failed with this reason (CamelCase) and message. */
class RunFailure extends Error {
  readonly reason: string;
  constructor(reason: string, message: string) {
    super(message);
    this.reason = reason;
  }
}

export function vmBackupRunController(options: VMBackupRunControllerOptions): ControllerDefinition {
  const none = () => [];
  // A cluster turning Ready, a PVC or policy appearing: the waiting runs look again at once instead of at their next poll.
  const pendingRuns = (_changed: KubeObject, runs: Informer): string[] =>
    runs
      .list()
      .filter((r) => (vmBackupRun.safeParse(r).data?.status?.phase ?? 'Pending') === 'Pending')
      .map((r) => objectKey(r.metadata.namespace, r.metadata.name));
  return {
    name: 'vmbackuprun',
    for: vmBackupRunType,
    owns: [jobType],
    watches: [
      { type: nutanixClusterType, map: pendingRuns },
      { type: vmBackupPolicyType, map: pendingRuns },
      { type: persistentVolumeClaimType, map: pendingRuns },
      { type: secretType, map: none },
      { type: podType, map: none },
    ],
    workers: 4,
    reconcile: (request, context) => reconcileRun(request, context, options),
  };
}

async function reconcileRun(request: ReconcileRequest, context: ReconcileContext, options: VMBackupRunControllerOptions): Promise<Step> {
  const raw = await context.api.getIfExists(vmBackupRunType, request.namespace, request.name, context.signal);
  if (!raw) return {};
  const parsed = vmBackupRun.safeParse(raw);
  if (!parsed.success) {
    throw new AppError(ErrorCode.InvalidInput, `VMBackupRun ${objectKey(request.namespace, request.name)} does not match the schema: ${z.prettifyError(parsed.error)}`, {
      hint: 'create a new run with valid fields (the spec is immutable)',
    });
  }
  const run = new RunReconciler(parsed.data, context, options);
  if (run.run.metadata.deletionTimestamp) return run.finalize();
  try {
    switch (run.phase) {
      case 'Pending':
        return await run.pending();
      case 'Snapshotting':
        return await run.snapshot();
      case 'Exporting':
        return await run.exporting();
      case 'Finalizing':
        return await run.finalizing();
      case 'Failed':
        return await run.cleanUpFailed();
      default:
        return {};
    }
  } catch (err) {
    if (err instanceof RunFailure) return run.fail(err.reason, err.message);
    // Mid-flight, an error retrying cannot fix (a failed Prism task, a refused request) ends the run with its reason.
    if (isAppError(err) && !err.retryable && !context.signal.aborted && ['Snapshotting', 'Exporting', 'Finalizing'].includes(run.phase)) {
      return run.fail(reasonFromCode(err.code), err.oneLine());
    }
    throw err;
  }
}

class RunReconciler {
  readonly run: VMBackupRun;
  private readonly context: ReconcileContext;
  private readonly options: VMBackupRunControllerOptions;
  private readonly namespace: string;
  private readonly now = new Date();
  private resourceVersion: string | undefined;

  constructor(run: VMBackupRun, context: ReconcileContext, options: VMBackupRunControllerOptions) {
    this.run = run;
    this.context = context;
    this.options = options;
    this.namespace = run.metadata.namespace ?? '';
    this.resourceVersion = run.metadata.resourceVersion;
  }

  get phase(): string {
    return this.run.status?.phase ?? 'Pending';
  }

  private get status(): VMBackupRunStatus {
    return this.run.status ?? {};
  }

  private get poll(): Step {
    return { requeueAfterMs: this.options.pollIntervalMs ?? 5000 };
  }

  private get owner(): OwnerRun {
    return { name: this.run.metadata.name, namespace: this.namespace, uid: this.run.metadata.uid ?? '' };
  }

  private get initiatorName(): string {
    return moverInitiatorName(this.run.metadata.uid ?? this.run.metadata.name);
  }

  /** Deletes the export volume groups of this run's movers that a killed mover left (tagged with the run's uid). */
  private async releaseExportVolumeGroups(prism: PrismClient): Promise<void> {
    const uid = this.run.metadata.uid;
    if (!uid) return;
    const released = await prism.releaseExportVolumeGroups(uid, this.context.signal);
    if (released.length > 0) this.context.log.info({ volumeGroups: released }, 'released export volume groups left by movers');
  }

  private get policyLabel(): string {
    return this.run.spec.policyRef?.name ?? '';
  }

  // ---- inputs -------------------------------------------------------------------------------------------------

  /** The policy, cluster and repository this run uses, or a reason to wait naming the field. */
  private inputs(): RunInputs | { wait: ConditionInput } {
    const wait = (reason: string, message: string) => ({ wait: { type: RunCondition.Waiting, status: 'True', reason, message } as const });
    const { spec } = this.run;
    let policy: VMBackupPolicy | undefined;
    if (spec.policyRef) {
      const raw = this.context.cache(vmBackupPolicyType).get(this.namespace, spec.policyRef.name);
      if (!raw) return wait('PolicyNotFound', `VMBackupPolicy ${spec.policyRef.name} (spec.policyRef.name) does not exist in ${this.namespace}`);
      const parsed = vmBackupPolicy.safeParse(raw);
      if (!parsed.success) return wait('PolicyInvalid', `VMBackupPolicy ${spec.policyRef.name} does not match the schema: ${z.prettifyError(parsed.error)}`);
      policy = parsed.data;
    }
    const clusterName = spec.clusterRef?.name ?? policy?.spec.clusterRef.name;
    const repo = spec.repository ?? policy?.spec.repository;
    if (!clusterName || !repo) return wait('ClusterRefMissing', 'name a NutanixCluster in spec.clusterRef and a repository in spec.repository, or a policy in spec.policyRef');
    const clusterRaw = this.context.cache(nutanixClusterType).get(this.namespace, clusterName);
    const field = spec.clusterRef ? 'spec.clusterRef.name' : `the policy's spec.clusterRef.name`;
    if (!clusterRaw) return wait('ClusterNotFound', `NutanixCluster ${clusterName} (${field}) does not exist in ${this.namespace}`);
    const cluster = nutanixCluster.parse(clusterRaw);
    return {
      cluster,
      repository: { claimName: repo.persistentVolumeClaim.claimName, path: repo.persistentVolumeClaim.path },
      consistency: spec.consistency ?? policy?.spec.consistency ?? 'auto',
      ...(policy ? { policy } : {}),
    };
  }

  /** The inputs, or a RunFailure: once a run has started, a vanished policy or cluster fails it. */
  private requireInputs(): RunInputs {
    const inputs = this.inputs();
    if ('wait' in inputs) throw new RunFailure(inputs.wait.reason, inputs.wait.message);
    return inputs;
  }

  private prism(cluster: NutanixCluster): PrismClient {
    const resolved = resolveConnection(cluster, this.context.cache(secretType));
    if ('verdict' in resolved) {
      throw new AppError(ErrorCode.Unauthenticated, `NutanixCluster ${cluster.metadata.name}: ${resolved.verdict.ready.message}`, { retryable: true });
    }
    return this.context.prismClients.get(objectKey(this.namespace, cluster.metadata.name), resolved.connection);
  }

  private allRuns(): VMBackupRun[] {
    return this.context
      .cache(vmBackupRunType)
      .list()
      .flatMap((raw) => {
        const parsed = vmBackupRun.safeParse(raw);
        return parsed.success ? [parsed.data] : [];
      });
  }

  private clusterOf(run: VMBackupRun): string | undefined {
    if (run.spec.clusterRef) return run.spec.clusterRef.name;
    const policy = run.spec.policyRef && this.context.cache(vmBackupPolicyType).get(this.namespace, run.spec.policyRef.name);
    const parsed = policy ? vmBackupPolicy.safeParse(policy) : undefined;
    return parsed?.success ? parsed.data.spec.clusterRef.name : undefined;
  }

  private repositoryOf(run: VMBackupRun): RepositoryKey | undefined {
    let repo = run.spec.repository;
    if (!repo && run.spec.policyRef) {
      const policy = this.context.cache(vmBackupPolicyType).get(this.namespace, run.spec.policyRef.name);
      const parsed = policy ? vmBackupPolicy.safeParse(policy) : undefined;
      repo = parsed?.success ? parsed.data.spec.repository : undefined;
    }
    return repo ? { claimName: repo.persistentVolumeClaim.claimName, path: repo.persistentVolumeClaim.path } : undefined;
  }

  // ---- Pending ------------------------------------------------------------------------------------------------

  async pending(): Promise<Step> {
    const inputs = this.inputs();
    if ('wait' in inputs) return this.waitFor(inputs.wait);
    const { cluster, repository } = inputs;
    const ready = findCondition(cluster.status?.conditions, 'Ready');
    if (ready?.status !== 'True') {
      return this.waitFor({ type: RunCondition.Waiting, status: 'True', reason: 'ClusterNotReady', message: `NutanixCluster ${cluster.metadata.name} is not Ready: ${ready?.message ?? 'not discovered yet'}` });
    }
    if (!this.context.cache(persistentVolumeClaimType).get(this.namespace, repository.claimName)) {
      const field = this.run.spec.repository ? 'spec.repository.persistentVolumeClaim.claimName' : "the policy's spec.repository.persistentVolumeClaim.claimName";
      return this.waitFor({ type: RunCondition.Waiting, status: 'True', reason: 'RepositoryNotFound', message: `PersistentVolumeClaim ${repository.claimName} (${field}) does not exist in ${this.namespace}` });
    }
    const prism = this.prism(cluster);
    const vm = await this.resolveVm(prism);
    if (vm.disks.length === 0) throw new RunFailure('VMHasNoDisks', `VM ${vm.name} has no disks to back up (CD-ROMs and volume-group disks are not backed up)`);

    const runs = this.allRuns();
    const blocker = blockingRun(this.run, vm, runs);
    if (blocker) {
      return this.waitFor({ type: RunCondition.Waiting, status: 'True', reason: 'WaitingForRun', message: `VMBackupRun ${blocker.metadata.name} of VM ${vm.name} is still active; this run starts after it` });
    }
    const busy = busyRunsOfCluster(cluster.metadata.name, runs, (r) => this.clusterOf(r));
    if (busy.length >= cluster.spec.concurrency.maxVMs) {
      return this.waitFor({
        type: RunCondition.Waiting,
        status: 'True',
        reason: 'ClusterBusy',
        message: `${busy.length} VMs are being backed up on NutanixCluster ${cluster.metadata.name} (spec.concurrency.maxVMs: ${cluster.spec.concurrency.maxVMs})`,
      });
    }

    const history = committedRuns(vm.uuid, repository, runs, (r) => this.repositoryOf(r));
    let decision = chooseBase(this.run.spec.type, history);
    if (decision.base && !(await prism.getRecoveryPoint(decision.base.recoveryPointId, this.context.signal))) {
      decision = { reason: `base recovery point ${decision.base.recoveryPointId} of run ${decision.base.runName} is gone on Nutanix → full` };
    }

    // The first successful read of Prism happened: from here on the run may own something there.
    await this.addFinalizer();
    const pointId = newPointId(this.now);
    await this.writeStatus(
      {
        phase: 'Snapshotting',
        vm: { name: vm.name, uuid: vm.uuid, clusterUUID: vm.cluster.uuid },
        pointId,
        ...(decision.base ? { base: { runName: decision.base.runName, pointId: decision.base.pointId, recoveryPointId: decision.base.recoveryPointId } } : {}),
        backupType: decision.base ? 'Incremental' : 'Full',
        backupTypeReason: decision.reason,
        startTime: rfc3339(this.now),
      },
      [
        { type: RunCondition.Waiting, status: 'False', reason: 'Started', message: 'the run started' },
        { type: RunCondition.Ready, status: 'False', reason: 'Snapshotting', message: `creating recovery point ${recoveryPointName(pointId)} of VM ${vm.name}` },
        { type: RunCondition.Succeeded, status: 'Unknown', reason: 'Running', message: 'the run is in progress' },
      ],
    );
    this.context.metrics.backupAttempts.labels(this.policyLabel).inc();
    await this.event(EventKind.Normal, 'Started', 'Backup', `${decision.base ? 'incremental' : 'full'} backup of VM ${vm.name} into point ${pointId}: ${decision.reason}`);
    return { requeueAfterMs: 0 };
  }

  private async resolveVm(prism: PrismClient): Promise<Vm> {
    const { vm } = this.run.spec;
    try {
      return vm.uuid ? await prism.getVm(vm.uuid, this.context.signal) : await prism.findVm(vm.name ?? '', this.context.signal);
    } catch (err) {
      if (isAppError(err) && err.code === ErrorCode.NotFound) {
        throw new RunFailure('VMNotFound', `${vm.uuid ? `spec.vm.uuid ${vm.uuid}` : `spec.vm.name ${vm.name}`}: no such VM in Prism`);
      }
      if (isAppError(err) && err.code === ErrorCode.InvalidInput && !vm.uuid) {
        throw new RunFailure('VMAmbiguous', `spec.vm.name ${vm.name}: ${err.message}; name the VM by spec.vm.uuid`);
      }
      throw err;
    }
  }

  // ---- Snapshotting -------------------------------------------------------------------------------------------

  async snapshot(): Promise<Step> {
    const inputs = this.requireInputs();
    const { vm: vmRef, pointId } = this.requireStarted();
    const prism = this.prism(inputs.cluster);
    const vm = await prism.getVm(vmRef.uuid, this.context.signal);
    let plan;
    try {
      plan = planConsistency(inputs.consistency, vm.name, vm.ngt);
    } catch (err) {
      throw new RunFailure('ConsistencyUnavailable', isAppError(err) ? err.oneLine() : String(err));
    }
    // The run's uid is the idempotency key: a restart between create and record gets the same recovery point.
    const recoveryPoint = await prism.createRecoveryPoint({
      vm,
      name: recoveryPointName(pointId),
      consistency: plan.request,
      requestId: this.run.metadata.uid ?? '',
      signal: this.context.signal,
    });
    await this.writeStatus({ recoveryPointIds: [recoveryPoint.id] }, []);
    let judged;
    try {
      judged = judgeObtained(inputs.consistency, plan, recoveryPoint.consistency, vm.name);
    } catch (err) {
      throw new RunFailure('ConsistencyDowngraded', isAppError(err) ? err.oneLine() : String(err));
    }
    const disks = vm.disks.filter((d) => recoveryPoint.disks.some((rd) => rd.diskUuid === d.uuid));
    if (disks.length === 0) throw new RunFailure('RecoveryPointHasNoDisks', `recovery point ${recoveryPoint.id} holds none of the disks of VM ${vm.name}`);
    await this.writeStatus(
      {
        phase: 'Exporting',
        consistency: judged.obtained === Consistency.Application ? 'application' : 'crash',
        ...(judged.downgradeReason ? { consistencyReason: judged.downgradeReason } : {}),
        disks: disks.map((d) => ({ diskUUID: d.uuid, index: d.index, sizeBytes: d.sizeBytes, progressPercent: 0 })),
      },
      [{ type: RunCondition.Ready, status: 'False', reason: 'Exporting', message: `exporting ${disks.length} disk(s) of recovery point ${recoveryPoint.id}` }],
    );
    await this.event(EventKind.Normal, 'RecoveryPointCreated', 'Snapshot', `recovery point ${recoveryPoint.id} (${judged.obtained}${judged.downgradeReason ? `: ${judged.downgradeReason}` : ''})`);
    return { requeueAfterMs: 0 };
  }

  private requireStarted(): { vm: { uuid: string; name: string; clusterUUID: string }; pointId: string } {
    const { vm, pointId } = this.status;
    if (!vm?.clusterUUID || !pointId) throw new RunFailure('StatusIncomplete', `phase ${this.phase} without status.vm or status.pointId: the run cannot continue`);
    return { vm: { uuid: vm.uuid, name: vm.name, clusterUUID: vm.clusterUUID }, pointId };
  }

  private async recoveryPoint(prism: PrismClient): Promise<RecoveryPoint> {
    const id = this.status.recoveryPointIds?.[0];
    if (!id) throw new RunFailure('StatusIncomplete', `phase ${this.phase} without status.recoveryPointIds: the run cannot continue`);
    const rp = await prism.getRecoveryPoint(id, this.context.signal);
    if (!rp) throw new RunFailure('RecoveryPointGone', `recovery point ${id} of this run no longer exists on Nutanix`);
    return rp;
  }

  // ---- Exporting ----------------------------------------------------------------------------------------------

  async exporting(): Promise<Step> {
    const inputs = this.requireInputs();
    const started = this.requireStarted();
    const disks = this.status.disks ?? [];
    if (disks.length === 0) throw new RunFailure('StatusIncomplete', 'phase Exporting without status.disks: the run cannot continue');
    const jobs = this.context.cache(jobType);
    const startDeadline = this.options.jobStartDeadlineMs ?? 600_000;
    const missing: number[] = [];
    let done = 0;
    for (const [i, disk] of disks.entries()) {
      const name = diskJobName(this.run.metadata.name, disk.index ?? i);
      const job = jobs.get(this.namespace, name) ?? (disk.jobName ? await this.context.api.getIfExists(jobType, this.namespace, name, this.context.signal) : undefined);
      if (!job) {
        if (!disk.jobName) missing.push(i);
        else if (disk.progressPercent === 100) done++; // finished and removed by ttlSecondsAfterFinished
        else return this.failDisk(i, 'JobVanished', `export Job ${name} of disk ${disk.index ?? i} disappeared before it finished`);
        continue;
      }
      if (!disk.jobName) await this.patchDisk(i, disk.diskUUID, { jobName: name });
      const state = jobState(job, this.now);
      if (state.state === 'succeeded') done++;
      // The mover writes its own reason into the disk entry; the Job's Failed message is the Job controller's generic one.
      else if (state.state === 'failed') return this.failDisk(i, 'ExportFailed', `disk ${disk.index ?? i}: ${disk.failureReason ?? state.message}`);
      else if (state.state === 'waiting' && state.sinceMs > startDeadline) {
        return this.failDisk(i, 'JobNotStarted', `export Job ${name} did not start within ${Math.round(startDeadline / 1000)} s (check the PVC, the image and resource quotas)`);
      }
    }
    if (done === disks.length) {
      await this.writeStatus({ phase: 'Finalizing' }, [{ type: RunCondition.Ready, status: 'False', reason: 'Finalizing', message: 'committing the restore point' }]);
      return { requeueAfterMs: 0 };
    }
    if (missing.length > 0) await this.createDiskJobs(inputs, started, missing);
    return this.poll;
  }

  /** Creates the missing disk Jobs the cluster's maxDisks allows now; the rest wait for the next reconcile. */
  private async createDiskJobs(inputs: RunInputs, started: ReturnType<RunReconciler['requireStarted']>, missing: number[]): Promise<void> {
    const clusterName = inputs.cluster.metadata.name;
    const active = this.context
      .cache(jobType)
      .list()
      .filter((j) => j.metadata.labels?.[clusterLabel] === clusterName && j.metadata.labels[jobLabels.role] === 'disk')
      .filter((j) => ['running', 'waiting'].includes(jobState(j, this.now).state)).length;
    const slots = Math.max(0, inputs.cluster.spec.concurrency.maxDisks - active);
    if (slots === 0) return;
    const prism = this.prism(inputs.cluster);
    const recoveryPoint = await this.recoveryPoint(prism);
    const vm = await prism.getVm(started.vm.uuid, this.context.signal);
    const base = this.status.base;
    const baseRecoveryPoint = base ? await prism.getRecoveryPoint(base.recoveryPointId, this.context.signal) : undefined;
    const baseRun = base ? this.allRuns().find((r) => r.metadata.name === base.runName) : undefined;
    const disks = this.status.disks ?? [];
    for (const i of missing.slice(0, slots)) {
      const entry = disks[i];
      const disk = vm.disks.find((d) => d.uuid === entry?.diskUUID);
      if (!entry || !disk) throw new RunFailure('DiskGone', `disk ${entry?.diskUUID} is no longer attached to VM ${vm.name}`);
      const baseDisk = baseRun?.status?.disks?.find((d) => d.index === disk.index);
      const request: DiskRequestInput = {
        apiVersion: 'sendense.io/mover-request/v1',
        kind: 'disk',
        ...this.attempt(inputs, started),
        parentPointId: base?.pointId ?? null,
        createdAt: this.status.startTime ?? rfc3339(this.now),
        recoveryPoint: { ...recoveryPoint, disks: recoveryPoint.disks.map((d) => ({ ...d })) },
        disk,
        statusIndex: i,
        ...(baseRecoveryPoint && baseDisk?.sizeBytes
          ? { base: { recoveryPoint: { ...baseRecoveryPoint, disks: baseRecoveryPoint.disks.map((d) => ({ ...d })) }, diskUuid: baseDisk.diskUUID, sizeBytes: baseDisk.sizeBytes } }
          : {}),
        ...(base && !baseRecoveryPoint ? { noBaseReason: `base recovery point ${base.recoveryPointId} is gone` } : {}),
        ...(base && baseRecoveryPoint && !baseDisk?.sizeBytes ? { noBaseReason: 'new disk' } : {}),
        initiatorName: this.initiatorName,
        ...(this.run.metadata.uid ? { exportTag: this.run.metadata.uid } : {}),
        progressIntervalSeconds: this.options.progressIntervalSeconds ?? 3,
      };
      const job = buildDiskJob(this.owner, request, this.jobEnvironment(inputs));
      await this.createJob(job);
      await this.patchDisk(i, entry.diskUUID, { jobName: job.metadata?.name ?? '' });
    }
  }

  private attempt(inputs: RunInputs, started: ReturnType<RunReconciler['requireStarted']>) {
    return {
      run: { namespace: this.namespace, name: this.run.metadata.name },
      prism: { endpoint: inputs.cluster.spec.endpoint, insecureSkipTlsVerify: inputs.cluster.spec.insecureSkipTLSVerify },
      repository: { path: inputs.repository.path },
      vm: { uuid: started.vm.uuid, name: started.vm.name, clusterUuid: started.vm.clusterUUID },
      pointId: started.pointId,
    };
  }

  private jobEnvironment(inputs: RunInputs): JobEnvironment {
    const { cluster } = inputs;
    const { mover } = this.options;
    return {
      image: mover.image,
      ...(mover.imagePullPolicy ? { imagePullPolicy: mover.imagePullPolicy } : {}),
      credentialsSecret: cluster.spec.credentialsSecretRef,
      ...(cluster.spec.caSecretRef ? { caSecret: cluster.spec.caSecretRef } : {}),
      repositoryClaim: inputs.repository.claimName,
      ...(mover.resources ? { resources: mover.resources } : {}),
      ...(mover.activeDeadlineSeconds ? { activeDeadlineSeconds: mover.activeDeadlineSeconds } : {}),
      ...(mover.ttlSecondsAfterFinished !== undefined ? { ttlSecondsAfterFinished: mover.ttlSecondsAfterFinished } : {}),
      ...(mover.serviceAccount ? { serviceAccountName: mover.serviceAccount } : {}),
      labels: { [clusterLabel]: cluster.metadata.name, ...(this.run.spec.policyRef ? { 'backup.sendense.io/policy': this.run.spec.policyRef.name } : {}) },
    };
  }

  private async createJob(job: unknown): Promise<void> {
    try {
      await this.context.api.create(jobType, this.namespace, job, this.context.signal);
    } catch (err) {
      if (kubeStatusOf(err) !== 409) throw err; // created by an earlier reconcile whose record did not land
    }
  }

  private async failDisk(index: number, reason: string, message: string): Promise<Step> {
    const disk = this.status.disks?.[index];
    if (disk && !disk.failureReason) await this.patchDisk(index, disk.diskUUID, { failureReason: message }).catch(() => undefined);
    return this.fail(reason, message);
  }

  /** JSON patch of one status.disks entry, guarded by its UUID like the movers' patches. */
  private async patchDisk(index: number, diskUuid: string, fields: Record<string, unknown>): Promise<void> {
    const ops: unknown[] = [{ op: 'test', path: `/status/disks/${index}/diskUUID`, value: diskUuid }];
    for (const [key, value] of Object.entries(fields)) ops.push({ op: 'add', path: `/status/disks/${index}/${key}`, value });
    const updated = await this.context.api.patch(vmBackupRunType, this.namespace, this.run.metadata.name, ops, { patchType: PatchType.Json, subresource: 'status', signal: this.context.signal });
    this.resourceVersion = resourceVersionOf(updated) ?? this.resourceVersion;
  }

  // ---- Finalizing ---------------------------------------------------------------------------------------------

  async finalizing(): Promise<Step> {
    const inputs = this.requireInputs();
    const started = this.requireStarted();
    const name = jobName(this.run.metadata.name, 'commit');
    const job = this.context.cache(jobType).get(this.namespace, name) ?? (this.status.commitJobName ? await this.context.api.getIfExists(jobType, this.namespace, name, this.context.signal) : undefined);
    if (!job) {
      if (this.status.commitJobName) throw new RunFailure('JobVanished', `commit Job ${name} disappeared before it finished`);
      await this.createCommitJob(inputs, started);
      return this.poll;
    }
    if (!this.status.commitJobName) await this.writeStatus({ commitJobName: name }, []);
    const state = jobState(job, this.now);
    if (state.state === 'failed') throw new RunFailure('CommitFailed', `commit Job ${name}: ${state.message}`);
    if (state.state === 'waiting' && state.sinceMs > (this.options.jobStartDeadlineMs ?? 600_000)) throw new RunFailure('JobNotStarted', `commit Job ${name} did not start in time`);
    if (state.state !== 'succeeded') return this.poll;
    return this.complete(inputs);
  }

  private async createCommitJob(inputs: RunInputs, started: ReturnType<RunReconciler['requireStarted']>): Promise<void> {
    const prism = this.prism(inputs.cluster);
    const recoveryPoint = await this.recoveryPoint(prism);
    const vm = await prism.getVm(started.vm.uuid, this.context.signal);
    const retention = inputs.policy?.spec.retention;
    const request: CommitRequestInput = {
      apiVersion: 'sendense.io/mover-request/v1',
      kind: 'commit',
      ...this.attempt(inputs, started),
      diskIndexes: (this.status.disks ?? []).map((d, i) => d.index ?? i),
      typeReason: this.status.backupTypeReason ?? '',
      // A Vm carries exactly the manifest's VmConfig fields (buildCommitJob's schema parse keeps only those);
      // engine/backup.ts's vmConfig would load the whole data path into the operator process (issue 5).
      vmConfig: vm,
      consistency: {
        requested: inputs.consistency,
        obtained: this.status.consistency === 'application' ? Consistency.Application : Consistency.Crash,
        ...(this.status.consistencyReason ? { reason: this.status.consistencyReason } : {}),
      },
      recoveryPoint: {
        id: recoveryPoint.id,
        generation: recoveryPoint.generation,
        ...(recoveryPoint.vmRecoveryPointId ? { vmRecoveryPointId: recoveryPoint.vmRecoveryPointId } : {}),
        disks: recoveryPoint.disks.map((d) => ({ ...d })),
      },
      // The controller deletes the old base itself after the commit, so a failure there becomes PartiallyFailed.
      supersededRecoveryPointIds: [],
      ...(retention ? { retention: { keepLast: retention.keepLast, keepDaily: retention.daily, keepWeekly: retention.weekly, keepMonthly: retention.monthly } } : {}),
    };
    const job = buildCommitJob(this.owner, request, this.jobEnvironment(inputs));
    await this.createJob(job);
    await this.writeStatus({ commitJobName: job.metadata?.name ?? '' }, []);
  }

  /** After the commit: delete the superseded base recovery points, fill the figures, Succeeded or PartiallyFailed. */
  private async complete(inputs: RunInputs): Promise<Step> {
    const started = this.requireStarted();
    const own = this.status.recoveryPointIds?.[0];
    // The base, and any older committed run's recovery point a failed delete left behind (the sweep).
    const superseded = new Set<string>();
    if (this.status.base) superseded.add(this.status.base.recoveryPointId);
    for (const r of committedRuns(started.vm.uuid, inputs.repository, this.allRuns(), (x) => this.repositoryOf(x))) {
      if (r.metadata.name !== this.run.metadata.name) for (const id of r.status?.recoveryPointIds ?? []) superseded.add(id);
    }
    if (own) superseded.delete(own);
    let kept: { id: string; error: string } | undefined;
    const prism = this.prism(inputs.cluster);
    for (const id of superseded) {
      try {
        await prism.deleteRecoveryPoint(id, this.context.signal);
      } catch (err) {
        if (this.context.signal.aborted) throw err;
        kept ??= { id, error: isAppError(err) ? err.message : String(err) };
      }
    }
    const completion = new Date();
    const totals = this.status.totals ?? {};
    const durationMs = completion.getTime() - Date.parse(this.status.startTime ?? rfc3339(this.now));
    const { summary, dataReductionRatio } = summarize({ changedBytes: totals.changedBytes ?? 0, transferredBytes: totals.transferredBytes ?? 0, durationMs });
    const phase = kept ? 'PartiallyFailed' : 'Succeeded';
    const conditions: ConditionInput[] = [
      kept
        ? { type: RunCondition.Ready, status: 'False', reason: 'BaseRecoveryPointKept', message: `the restore point is committed, but recovery point ${kept.id} could not be deleted on Nutanix (${kept.error}); the next run deletes it` }
        : { type: RunCondition.Ready, status: 'True', reason: 'Succeeded', message: `${this.status.backupType ?? 'backup'} restore point ${started.pointId} committed` },
      { type: RunCondition.Succeeded, status: 'True', reason: phase, message: `restore point ${started.pointId} committed` },
      ...(kept ? [{ type: RunCondition.BaseRecoveryPointDeleted, status: 'False', reason: 'DeleteFailed', message: `recovery point ${kept.id}: ${kept.error}` } as const] : []),
    ];
    await this.writeStatus({ phase, completionTime: rfc3339(completion), summary, ...(dataReductionRatio === undefined ? {} : { dataReductionRatio }) }, conditions);
    const m = this.context.metrics;
    const policy = this.policyLabel;
    (kept ? m.backupPartialFailures : m.backupSuccesses).labels(policy).inc();
    m.backupDuration.labels(policy).observe(durationMs / 1000);
    m.backupBytesTransferred.labels(policy).inc(totals.transferredBytes ?? 0);
    m.backupLastSuccessfulTimestamp.labels(policy).set(completion.getTime() / 1000);
    if (kept) await this.event(EventKind.Warning, 'BaseRecoveryPointKept', 'Finalize', conditions[0]?.message ?? '');
    await this.event(EventKind.Normal, 'Completed', 'Finalize', `${this.status.backupType ?? ''} restore point ${started.pointId}: ${summary.changed} changed, ${summary.throughput}, ${summary.duration}`);
    return {};
  }

  // ---- Failed -------------------------------------------------------------------------------------------------

  /** Records the failure; the next reconcile (phase Failed) stops the Jobs and cleans up. */
  async fail(reason: string, message: string): Promise<Step> {
    const now = new Date();
    await this.writeStatus({ phase: 'Failed', failureReason: message, completionTime: rfc3339(now) }, [
      { type: RunCondition.Ready, status: 'False', reason, message },
      { type: RunCondition.Succeeded, status: 'False', reason, message },
      { type: RunCondition.Waiting, status: 'False', reason: 'Finished', message: 'the run finished' },
      { type: RunCondition.CleanedUp, status: 'False', reason: 'CleaningUp', message: 'stopping Jobs, deleting the recovery point and the staging folder' },
    ]);
    this.context.metrics.backupFailures.labels(this.policyLabel).inc();
    await this.event(EventKind.Warning, reason, 'Backup', message);
    return { requeueAfterMs: 0 };
  }

  async cleanUpFailed(): Promise<Step> {
    if (findCondition(this.status.conditions, RunCondition.CleanedUp)?.status !== 'False') return {};
    if (findCondition(this.status.conditions, RunCondition.CleanedUp)?.reason !== 'CleaningUp') return {};
    const stillRunning = await this.stopJobs((role) => role !== 'cleanup');
    if (stillRunning) return this.poll;
    const { vm, pointId } = this.status;
    if (!vm?.clusterUUID || !pointId) return this.cleanedUp('NothingCreated', 'the run failed before it created anything');
    const inputs = this.inputs();
    const deadline = Date.parse(this.status.completionTime ?? rfc3339(this.now)) + (this.options.cleanupDeadlineMs ?? 1_800_000);
    try {
      if ('wait' in inputs) throw new AppError(ErrorCode.NotFound, inputs.wait.message);
      const prism = this.prism(inputs.cluster);
      await this.releaseExportVolumeGroups(prism);
      await deleteAttemptRecoveryPoints(prism, vm.uuid, pointId, this.status.recoveryPointIds?.[0], this.context.signal);
      const name = jobName(this.run.metadata.name, 'cleanup');
      const job = this.context.cache(jobType).get(this.namespace, name) ?? (this.status.cleanupJobName ? await this.context.api.getIfExists(jobType, this.namespace, name, this.context.signal) : undefined);
      if (!job) {
        if (this.status.cleanupJobName) return this.cleanedUp('Cleaned', `recovery point deleted; cleanup Job ${name} finished and was removed`);
        const { run, repository, vm: vmRef } = this.attempt(inputs, { vm: { uuid: vm.uuid, name: vm.name, clusterUUID: vm.clusterUUID }, pointId });
        const built = buildCleanupJob(this.owner, { apiVersion: 'sendense.io/mover-request/v1', kind: 'cleanup', run, repository, vm: vmRef, pointId }, this.jobEnvironment(inputs));
        await this.createJob(built);
        await this.writeStatus({ cleanupJobName: name }, []);
        return this.poll;
      }
      if (!this.status.cleanupJobName) await this.writeStatus({ cleanupJobName: name }, []); // the create's record did not land
      const state = jobState(job, this.now);
      if (state.state === 'succeeded') return this.cleanedUp('Cleaned', `recovery point of point ${pointId} deleted on Nutanix and its staging folder removed`);
      if (state.state === 'failed') return this.cleanedUp('StagingNotRemoved', `recovery point deleted, but cleanup Job ${name} failed: ${state.message}; the next commit of this VM removes the staging folder`, false);
      return this.poll;
    } catch (err) {
      if (this.context.signal.aborted || Date.now() < deadline) throw asRetryable(err);
      const message = `gave up cleaning up after ${Math.round((this.options.cleanupDeadlineMs ?? 1_800_000) / 60_000)} min: ${isAppError(err) ? err.message : String(err)}; recovery point ${this.status.recoveryPointIds?.[0] ?? recoveryPointName(pointId)} may remain on Nutanix`;
      return this.cleanedUp('CleanupAbandoned', message, false);
    }
  }

  private async cleanedUp(reason: string, message: string, ok = true): Promise<Step> {
    await this.writeStatus({}, [{ type: RunCondition.CleanedUp, status: ok ? 'True' : 'False', reason, message }]);
    if (!ok) await this.event(EventKind.Warning, reason, 'Cleanup', message);
    return {};
  }

  /** Deletes this run's unfinished Jobs of the given roles (with `includeFinished` also the finished ones); true while an unfinished one still exists. */
  private async stopJobs(roleFilter: (role: string) => boolean, includeFinished = false): Promise<boolean> {
    const uid = this.run.metadata.uid;
    const jobs = this.context
      .cache(jobType)
      .list()
      .filter((j) => j.metadata.ownerReferences?.some((o) => o.uid === uid) && roleFilter(j.metadata.labels?.[jobLabels.role] ?? ''));
    let remaining = false;
    for (const job of jobs) {
      const state = jobState(job, this.now).state;
      const unfinished = state === 'running' || state === 'waiting';
      remaining ||= unfinished;
      if ((unfinished || includeFinished) && !job.metadata.deletionTimestamp) await this.context.api.delete(jobType, this.namespace, job.metadata.name, this.context.signal);
    }
    return remaining && jobs.some((j) => this.context.cache(jobType).get(this.namespace, j.metadata.name));
  }

  // ---- Deletion -----------------------------------------------------------------------------------------------

  async finalize(): Promise<Step> {
    if (!this.run.metadata.finalizers?.includes(runFinalizer)) return {};
    const deadline = Date.parse(this.run.metadata.deletionTimestamp ?? rfc3339(this.now)) + (this.options.deletionDeadlineMs ?? 600_000);
    // Movers still running would re-create what is deleted below: stop them first (bounded by the same deadline).
    if ((await this.stopJobs(() => true, true)) && Date.now() < deadline) return { requeueAfterMs: 1000 };
    const { vm, pointId } = this.status;
    const keep = this.recoveryPointNeededByAnotherRun();
    try {
      if (vm && pointId && !keep) {
        const inputs = this.inputs();
        if ('wait' in inputs) throw new AppError(ErrorCode.NotFound, inputs.wait.message, { retryable: true });
        const prism = this.prism(inputs.cluster);
        await this.releaseExportVolumeGroups(prism);
        await deleteAttemptRecoveryPoints(prism, vm.uuid, pointId, this.status.recoveryPointIds?.[0], this.context.signal);
      }
    } catch (err) {
      if (this.context.signal.aborted || Date.now() < deadline) throw asRetryable(err);
      const what = this.status.recoveryPointIds?.[0] ?? (pointId ? recoveryPointName(pointId) : 'its recovery point');
      await this.event(EventKind.Warning, 'CleanupAbandoned', 'Delete', `deleted without cleaning up on Nutanix after ${Math.round((this.options.deletionDeadlineMs ?? 600_000) / 1000)} s: ${what} may remain (${isAppError(err) ? err.message : String(err)}); delete it in Prism`);
      this.context.log.warn({ recoveryPoint: what }, 'finalizer removed without deleting the recovery point');
    }
    await this.removeFinalizer();
    if (keep) this.context.log.info({ base: keep }, 'recovery point kept: an active run chains onto it and deletes it after its commit');
    return {};
  }

  /** A committed run's recovery point stays while an active run uses it as base (that run deletes it after its commit). */
  private recoveryPointNeededByAnotherRun(): string | undefined {
    if (!['Succeeded', 'PartiallyFailed'].includes(this.phase)) return undefined;
    const user = this.allRuns().find((r) => !isTerminal(r) && r.status?.base?.runName === this.run.metadata.name);
    return user?.metadata.name;
  }

  // ---- API writes ---------------------------------------------------------------------------------------------

  private async addFinalizer(): Promise<void> {
    const finalizers = this.run.metadata.finalizers ?? [];
    if (finalizers.includes(runFinalizer)) return;
    await this.patchMetadata({ finalizers: [...finalizers, runFinalizer] });
  }

  private async removeFinalizer(): Promise<void> {
    await this.patchMetadata({ finalizers: (this.run.metadata.finalizers ?? []).filter((f) => f !== runFinalizer) });
  }

  private async patchMetadata(metadata: Record<string, unknown>): Promise<void> {
    const updated = await this.context.api.patch(vmBackupRunType, this.namespace, this.run.metadata.name, { metadata: { ...metadata, resourceVersion: this.resourceVersion } }, { patchType: PatchType.Merge, signal: this.context.signal });
    this.resourceVersion = resourceVersionOf(updated) ?? this.resourceVersion;
  }

  /**
   * Merge patch of the controller's status fields plus conditions, guarded by the resourceVersion this reconcile
   * read, so a decision made on an old view never lands (409 → retried on a fresh read).
   */
  private async writeStatus(fields: Partial<VMBackupRunStatus>, conditions: ConditionInput[]): Promise<void> {
    const generation = this.run.metadata.generation;
    let list: Condition[] | undefined = this.status.conditions;
    for (const c of conditions) list = setCondition(list, c, generation, new Date());
    const status = { ...fields, ...(conditions.length > 0 ? { conditions: list } : {}), ...(generation === undefined ? {} : { observedGeneration: generation }) };
    const updated = await this.context.api.patch(vmBackupRunType, this.namespace, this.run.metadata.name, { metadata: { resourceVersion: this.resourceVersion }, status }, { patchType: PatchType.Merge, subresource: 'status', signal: this.context.signal });
    this.resourceVersion = resourceVersionOf(updated) ?? this.resourceVersion;
    this.run.status = { ...this.status, ...fields, ...(list ? { conditions: list } : {}) };
  }

  private async waitFor(condition: ConditionInput): Promise<Step> {
    const previous = findCondition(this.status.conditions, RunCondition.Waiting);
    if (previous?.status !== 'True' || previous.reason !== condition.reason || previous.message !== condition.message) {
      await this.writeStatus({ phase: 'Pending' }, [condition, { type: RunCondition.Ready, status: 'False', reason: condition.reason, message: condition.message }]);
      await this.event(EventKind.Normal, condition.reason, 'Wait', condition.message);
    }
    return this.poll;
  }

  private async event(type: EventKind, reason: string, action: string, note: string): Promise<void> {
    const regarding: KubeObject & { apiVersion: string; kind: string } = {
      apiVersion: this.run.apiVersion,
      kind: this.run.kind,
      metadata: { name: this.run.metadata.name, namespace: this.namespace, ...(this.run.metadata.uid ? { uid: this.run.metadata.uid } : {}) },
    };
    await this.context.events.record({ regarding, type, reason, action, note }, this.context.signal);
  }
}

function resourceVersionOf(object: unknown): string | undefined {
  const parsed = z.object({ metadata: z.object({ resourceVersion: z.string() }) }).safeParse(object);
  return parsed.success ? parsed.data.metadata.resourceVersion : undefined;
}

/** Clean-up keeps trying until its deadline, whatever the error class. */
function asRetryable(err: unknown): AppError {
  if (isAppError(err) && err.retryable) return err;
  return new AppError(isAppError(err) ? err.code : ErrorCode.Internal, isAppError(err) ? err.message : String(err), { retryable: true, cause: err });
}
