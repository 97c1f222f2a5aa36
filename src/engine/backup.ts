/**
 * One backup of one VM: recovery point, per-disk plan, export, copy, atomic commit, then the old base recovery
 * point is deleted. Every failure path deletes what this attempt created on Nutanix; what cannot be deleted
 * (Prism unreachable, process killed) stays in the staging journal and the next backup of the VM deletes it.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { mapBounded } from '../lib/concurrency.ts';
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import { failpoint, Failpoint } from '../lib/failpoint.ts';
import { createLogger, type Logger } from '../lib/log.ts';
import type { StorageTier } from '../mover/tiers.ts';
import type { PreparedExport, PrismClient, RecoveryPoint, Vm, VmDisk } from '../prism/types.ts';
import * as repository from '../repository/index.ts';
import { judgeObtained, planConsistency, type ConsistencyMode } from './consistency.ts';
import { backupDisk, type DiskPhaseTimings, type DiskProgressEvent } from './disk.ts';
export type { DiskProgressEvent } from './disk.ts';
import { deleteAttemptRecoveryPoints, exportTagOf, recoveryPointName, releaseLeftover, sweepStaleRecoveryPoints } from './cleanup.ts';
import { msSince, timed } from './timing.ts';

export const BackupMode = { Auto: 'auto', Full: 'full', Incremental: 'incremental' } as const;
export type BackupMode = (typeof BackupMode)[keyof typeof BackupMode];

export interface BackupRequest {
  repo: string;
  /** VM name or UUID. */
  vm: string;
  mode: BackupMode;
  consistency: ConsistencyMode;
  /** iSCSI initiator name this host uses for volume-group exports. */
  initiatorName: string;
  /** Disks of the VM copied at once. */
  parallelDisks?: number;
  tier?: StorageTier;
  tuning?: { requestSize?: number; inFlight?: number };
  /** CRT block size asked of Prism (v4: 32-256 KiB). */
  changedRegionBlockSize?: number;
  signal?: AbortSignal;
  logger?: Logger;
  onProgress?: (event: DiskProgressEvent) => void;
}

/** Milliseconds per phase of one backup; disk phases overlap each other and, partly, the VM-level phases. */
export interface BackupTimings {
  /** VM lookup, leftovers of killed attempts, base check, staging, sweep of stale recovery points. */
  prepareMs: number;
  /** Recovery point created on Nutanix and read back. */
  recoveryPointMs: number;
  disks: (DiskPhaseTimings & { index: number; /** Its stats and checksums recorded in the staging. */ recordMs: number })[];
  /** The restore point made durable and visible. */
  commitMs: number;
  /** The previous base recovery point deleted on Nutanix (after the commit). */
  baseDeleteMs: number;
  totalMs: number;
}

export interface BackupResult {
  point: repository.RestorePoint;
  /** Recovery points of earlier backups deleted on Nutanix after the commit. */
  deletedBaseRecoveryPoints: string[];
  timings: BackupTimings;
}

interface DiskOutcome {
  overlay: boolean;
  timings: DiskPhaseTimings & { recordMs: number };
  /** Why this disk was copied in full although a base existed. */
  fullReason?: string;
}

interface Base {
  previous: repository.RestorePoint;
  recoveryPoint: RecoveryPoint;
}

export async function backupVm(prism: PrismClient, request: BackupRequest): Promise<BackupResult> {
  const { signal } = request;
  const log = request.logger ?? createLogger({ name: 'backup' });
  const start = performance.now();
  const vm = await prism.findVm(request.vm, signal);
  if (vm.disks.length === 0) {
    throw new AppError(ErrorCode.InvalidInput, `VM ${vm.name} has no disks to back up`, { hint: 'CD-ROMs and volume-group disks are not backed up' });
  }
  const vmRef: repository.VmRef = { repo: request.repo, clusterUuid: vm.cluster.uuid, vmUuid: vm.uuid };
  await repository.recoverLeftovers(vmRef, (leftover) => releaseLeftover(prism, vm.uuid, leftover, signal), { logger: log });

  // The points are listed once: the newest is the base, the others' recovery points are swept below.
  const points = await repository.listVmPoints(vmRef);
  const previous = points.at(-1);
  const consistencyPlan = planConsistency(request.consistency, vm.name, vm.ngt);
  // The idempotency key goes into the staging's first journal write: no journal write of its own before the request.
  const requestId = randomUUID();
  const { base, typeReason, staged } = await chooseBaseAndBegin(prism, request, vmRef, previous, requestId, log);
  let recoveryPoint: RecoveryPoint | undefined;
  let recoveryPointRequested = false;
  let recording: Promise<{ error: unknown } | undefined> = Promise.resolve(undefined);
  // The export volume groups carry the attempt's tag: whatever this attempt leaves, its next run finds.
  const exportTag = exportTagOf(staged.pointId);
  let sweeping: Promise<{ ids: string[] } | { error: unknown }> = Promise.resolve({ ids: [] });
  let preparing: Promise<PreparedExport | undefined>[] = [];
  // A preparation that failed other than by refusal may still have made a volume group on Prism's side.
  let preparationUncertain = false;
  // Exports are released in the background from the end of each disk's copy, beside the commit.
  const releases: Promise<ReleaseOutcome>[] = [];
  try {
    const older = points.slice(0, -1);
    // Neither the sweep of stale recovery points nor the export volume groups need the new recovery point: both
    // run while Prism makes it.
    sweeping = sweepStaleRecoveryPoints(prism, vm.uuid, older.map((p) => ({ pointId: p.pointId, recoveryPointId: p.manifest.recoveryPoint.id })), signal).then(
      (ids) => ({ ids }),
      (error: unknown) => ({ error }),
    );
    preparing = vm.disks.map(() =>
      prism.prepareExport({ clusterUuid: vm.cluster.uuid, initiatorName: request.initiatorName, exportTag, signal }).catch((err: unknown) => {
        if (!refusedOutright(err)) preparationUncertain = true;
        log.info({ vm: vm.name, err: errorText(err) }, 'export volume group not made ahead: made after the recovery point');
        return undefined;
      }),
    );
    const prepareMs = msSince(start);
    const recoveryPointStart = performance.now();
    recoveryPointRequested = true;
    try {
      recoveryPoint = await prism.createRecoveryPoint({
        vm,
        name: recoveryPointName(staged.pointId),
        consistency: consistencyPlan.request,
        requestId,
        // Made above for this attempt: nothing on Nutanix can carry it yet.
        firstUse: true,
        signal,
      });
    } catch (err) {
      if (refusedOutright(err)) await staged.settleRecoveryPointRequest();
      throw err;
    }
    // Journaled while the disks are planned and exported: until it lands, the journaled request id lets a run after
    // a crash find the recovery point by its name. Awaited before the commit and before any clean-up.
    recording = staged.recordRecoveryPoint({ kind: 'recovery-point', id: recoveryPoint.id, detail: { generation: recoveryPoint.generation } }).then(
      () => undefined,
      (error: unknown) => ({ error }),
    );
    const swept = await sweeping;
    if ('error' in swept) throw swept.error;
    if (swept.ids.length) log.info({ vm: vm.name, recoveryPoints: swept.ids }, 'deleted stale recovery points of earlier backups');
    const recoveryPointMs = msSince(recoveryPointStart);
    const obtained = judgeObtained(request.consistency, consistencyPlan, recoveryPoint.consistency, vm.name);
    log.info({ vm: vm.name, recoveryPoint: recoveryPoint.id, consistency: obtained.obtained, reason: obtained.downgradeReason }, 'recovery point created');

    const rp = recoveryPoint;
    const outcomes = await copyDisks(prism, request, vm, rp, base, staged, { exportTag, preparing, releases }, log);
    const overlays = outcomes.filter((o) => o.overlay).length;
    const fallbacks = outcomes.flatMap((o, i) => (o.fullReason ? [`disk ${vm.disks[i]?.index}: ${o.fullReason}`] : []));
    const recorded = await recording;
    if (recorded) throw recorded.error;
    failpoint(Failpoint.BeforeCommit);
    const { value: point, ms: commitMs } = await timed(() => staged.commit({
      type: overlays > 0 ? 'incremental' : 'full',
      typeReason: [overlays > 0 ? `incremental on ${base?.previous.pointId}` : typeReason, ...fallbacks].join('; '),
      vm: vmConfig(vm),
      consistency: {
        requested: request.consistency,
        obtained: obtained.obtained,
        ...(obtained.downgradeReason ? { reason: obtained.downgradeReason } : {}),
      },
      recoveryPoint: {
        id: rp.id,
        generation: rp.generation,
        ...(rp.vmRecoveryPointId ? { vmRecoveryPointId: rp.vmRecoveryPointId } : {}),
        disks: rp.disks.map((d) => ({ ...d })),
      },
      signal,
    }));
    log.info({ vm: vm.name, point: point.pointId, type: point.manifest.type }, 'restore point committed');
    // Only now, with the new point durable, may the old base go; the exports' releases finish meanwhile.
    const [{ value: deletedBaseRecoveryPoints, ms: baseDeleteMs }, released] = await Promise.all([
      timed(() => deleteOldBases(prism, previous, rp.id, log, signal)),
      Promise.all(releases),
    ]);
    for (const outcome of released) {
      if ('error' in outcome) {
        log.warn(
          { vm: vm.name, disk: outcome.diskIndex, exportTag, err: errorText(outcome.error) },
          'restore point committed, but the export was not released: delete the volume groups named sendense-export-<exportTag>-* in Prism',
        );
      }
    }
    if (preparationUncertain) await releaseTagged(prism, exportTag, log, signal);
    const teardownMs = new Map(released.flatMap((r) => ('ms' in r ? [[r.diskIndex, r.ms] as const] : [])));
    const timings: BackupTimings = {
      prepareMs,
      recoveryPointMs,
      disks: outcomes.map((o, i) => {
        const index = vm.disks[i]?.index ?? i;
        return { index, ...o.timings, exportTeardownMs: teardownMs.get(index) ?? o.timings.exportTeardownMs };
      }),
      commitMs,
      baseDeleteMs,
      totalMs: msSince(start),
    };
    log.info({ vm: vm.name, point: point.pointId, timings }, 'backup phases');
    return { point, deletedBaseRecoveryPoints, timings };
  } catch (err) {
    // Let running Prism work settle: an export being made or released holds the recovery point's disk.
    const [, , ...prepared] = await Promise.all([recording, sweeping, ...preparing]);
    const released = await Promise.all(releases);
    for (const outcome of released) {
      if ('error' in outcome) log.warn({ vm: vm.name, disk: outcome.diskIndex, err: errorText(outcome.error) }, 'export not released');
    }
    // Volume groups may be left: prepared ones no disk took over, failed releases, uncertain preparations.
    const mayLeaveExports = preparationUncertain || prepared.some((p) => p !== undefined) || released.some((r) => 'error' in r);
    await abortAttempt(prism, vm, staged, mayLeaveExports ? exportTag : undefined, { recoveryPoint, requested: recoveryPointRequested }, log);
    throw err;
  }
}

/** Deletes the export volume groups carrying `exportTag` (unused preparations, failed releases); failures are logged. */
async function releaseTagged(prism: PrismClient, exportTag: string, log: Logger, signal?: AbortSignal): Promise<void> {
  try {
    const released = await prism.releaseExportVolumeGroups(exportTag, signal);
    if (released.length) log.info({ exportTag, volumeGroups: released }, 'released leftover export volume groups');
  } catch (err) {
    log.warn({ exportTag, err: errorText(err) }, 'leftover export volume groups not released: delete the volume groups named sendense-export-<exportTag>-* in Prism');
  }
}

/** The exports of one attempt: their tag, the volume groups being made ahead (one per disk), the releases running. */
interface DiskExports {
  exportTag: string;
  preparing: Promise<PreparedExport | undefined>[];
  releases: Promise<ReleaseOutcome>[];
}

/** How the background release of one disk's export ended. */
type ReleaseOutcome = { diskIndex: number; ms: number } | { diskIndex: number; error: unknown };

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * chooseBase beside beginPoint (a Prism round trip beside the lock and the journal's fsyncs). The staging names the
 * previous point as its parent unless a full is asked for: a disk copied in full is no overlay, and a point without
 * overlays commits as a full with no parent, so a base found gone costs nothing.
 */
async function chooseBaseAndBegin(
  prism: PrismClient,
  request: BackupRequest,
  vmRef: repository.VmRef,
  previous: repository.RestorePoint | undefined,
  requestId: string,
  log: Logger,
): Promise<{ base?: Base; typeReason: string; staged: repository.StagedPoint }> {
  const { signal } = request;
  const parentPointId = request.mode === BackupMode.Full ? null : (previous?.pointId ?? null);
  const [chosen, begun] = await Promise.allSettled([
    chooseBase(prism, request.mode, previous, signal),
    repository.beginPoint(vmRef, { parentPointId, recoveryPointRequestId: requestId, signal, logger: log }),
  ]);
  if (begun.status === 'rejected') throw begun.reason;
  const staged = begun.value;
  if (chosen.status === 'rejected') {
    // The request was never sent: settled, the staging holds nothing on Nutanix and is removed.
    await staged.settleRecoveryPointRequest().catch(() => undefined);
    await staged.abort();
    throw chosen.reason;
  }
  return { ...(chosen.value.base ? { base: chosen.value.base } : {}), typeReason: chosen.value.reason, staged };
}

/** Incremental needs the previous point's recovery point to still exist on Nutanix. */
async function chooseBase(
  prism: PrismClient,
  mode: BackupMode,
  previous: repository.RestorePoint | undefined,
  signal?: AbortSignal,
): Promise<{ base?: Base; reason: string }> {
  if (mode === BackupMode.Full) return { reason: 'full backup requested' };
  const unavailable = (why: string) => {
    if (mode === BackupMode.Incremental) {
      throw new AppError(ErrorCode.InvalidInput, `incremental backup impossible: ${why}`, { hint: 'use --mode auto or --mode full' });
    }
    return { reason: `${why} → full` };
  };
  if (!previous) return unavailable('no previous restore point');
  const recoveryPoint = await prism.getRecoveryPoint(previous.manifest.recoveryPoint.id, signal);
  if (!recoveryPoint) return unavailable(`base recovery point ${previous.manifest.recoveryPoint.id} is gone on Nutanix`);
  return { base: { previous, recoveryPoint }, reason: `incremental on ${previous.pointId}` };
}

async function copyDisks(
  prism: PrismClient,
  request: BackupRequest,
  vm: Vm,
  rp: RecoveryPoint,
  base: Base | undefined,
  staged: repository.StagedPoint,
  exports: DiskExports,
  log: Logger,
): Promise<DiskOutcome[]> {
  // One disk failing stops the others: their partial images are worthless once the point cannot commit.
  const stop = new AbortController();
  const signal = request.signal ? AbortSignal.any([request.signal, stop.signal]) : stop.signal;
  return mapBounded(vm.disks, request.parallelDisks ?? 2, async (disk, i) => {
    try {
      return await copyOneDisk(prism, request, disk, rp, base, staged, { exportTag: exports.exportTag, prepared: exports.preparing[i], releases: exports.releases }, log, signal);
    } catch (err) {
      stop.abort(err);
      throw err;
    }
  });
}

async function copyOneDisk(
  prism: PrismClient,
  request: BackupRequest,
  disk: VmDisk,
  rp: RecoveryPoint,
  base: Base | undefined,
  staged: repository.StagedPoint,
  exports: { exportTag: string; prepared: Promise<PreparedExport | undefined> | undefined; releases: Promise<ReleaseOutcome>[] },
  log: Logger,
  signal: AbortSignal,
): Promise<DiskOutcome> {
  const previousDisk = base?.previous.manifest.disks.find((d) => d.index === disk.index);
  const result = await backupDisk({
    prism,
    recoveryPoint: rp,
    disk,
    ...(base && previousDisk ? { base: { recoveryPoint: base.recoveryPoint, diskUuid: previousDisk.uuid, sizeBytes: previousDisk.logicalSizeBytes } } : {}),
    ...(base && !previousDisk ? { noBaseReason: 'new disk' } : {}),
    target: (overlay) => staged.copyTarget(disk.index, disk.sizeBytes, { overlay, signal }),
    initiatorName: request.initiatorName,
    exportTag: exports.exportTag,
    ...(exports.prepared ? { preparedExport: exports.prepared } : {}),
    deferRelease: true,
    ...(request.tier ? { tier: request.tier } : {}),
    ...(request.tuning ? { tuning: request.tuning } : {}),
    ...(request.changedRegionBlockSize ? { changedRegionBlockSize: request.changedRegionBlockSize } : {}),
    signal,
    log,
    ...(request.onProgress ? { onProgress: request.onProgress } : {}),
  });
  if (result.released) {
    exports.releases.push(result.released.then((ms) => ({ diskIndex: disk.index, ms }), (error: unknown) => ({ diskIndex: disk.index, error })));
  }
  const { ms: recordMs } = await timed(() => staged.writeDisk({
    index: disk.index,
    uuid: disk.uuid,
    logicalSizeBytes: disk.sizeBytes,
    stats: result.stats,
    checksums: result.checksums,
    zeroRanges: result.zeroRanges,
  }));
  return { overlay: result.overlay, timings: { ...result.timings, recordMs }, ...(result.fullReason ? { fullReason: result.fullReason } : {}) };
}

/** Prism refused the request itself (auth, permission, validation): it cannot have created anything. */
function refusedOutright(err: unknown): boolean {
  const refusals: readonly string[] = [ErrorCode.Unauthenticated, ErrorCode.Forbidden, ErrorCode.InvalidInput, ErrorCode.NotFound];
  return isAppError(err) && refusals.includes(err.code);
}

/**
 * Deletes this attempt's export volume groups (when `exportTag` says some may be left), recovery point and staging;
 * whatever cannot be deleted stays journaled for the next run.
 */
async function abortAttempt(
  prism: PrismClient,
  vm: Vm,
  staged: repository.StagedPoint,
  exportTag: string | undefined,
  { recoveryPoint, requested }: { recoveryPoint: RecoveryPoint | undefined; /** The recovery point request was sent. */ requested: boolean },
  log: Logger,
): Promise<void> {
  // Clean-up must run even when the backup was aborted, but not forever.
  const cleanupSignal = AbortSignal.timeout(120_000);
  // Export volume groups first: they hold the recovery point's disks.
  if (exportTag !== undefined) await releaseTagged(prism, exportTag, log, cleanupSignal);
  try {
    // A request id journaled but never sent: nothing can exist on Nutanix under it.
    if (!requested) await staged.settleRecoveryPointRequest();
    if (recoveryPoint !== undefined || staged.journal.recoveryPointRequestId !== undefined) {
      const deleted = await deleteAttemptRecoveryPoints(prism, vm.uuid, staged.pointId, recoveryPoint?.id, cleanupSignal);
      for (const id of deleted) await staged.removeResource('recovery-point', id);
      await staged.settleRecoveryPointRequest();
    }
  } catch (err) {
    log.warn({ vm: vm.name, point: staged.pointId, err: errorText(err) }, 'recovery point kept in the journal for the next run');
  }
  const removed = await staged.abort().catch(() => false);
  if (!removed) log.warn({ vm: vm.name, point: staged.pointId }, 'staging kept: the next backup of this VM cleans it up');
}

/** After a commit the previous base is no longer needed: the new recovery point is the next base. */
async function deleteOldBases(
  prism: PrismClient,
  previous: repository.RestorePoint | undefined,
  keepId: string,
  log: Logger,
  signal?: AbortSignal,
): Promise<string[]> {
  if (!previous || previous.manifest.recoveryPoint.id === keepId) return [];
  try {
    await prism.deleteRecoveryPoint(previous.manifest.recoveryPoint.id, signal);
    return [previous.manifest.recoveryPoint.id];
  } catch (err) {
    // The point is committed and safe; the next backup's sweep deletes the stale base.
    log.warn({ recoveryPoint: previous.manifest.recoveryPoint.id, err: errorText(err) }, 'old base recovery point not deleted');
    return [];
  }
}

/** The VM configuration a manifest records (also used by the run controller for its commit Job). */
export function vmConfig(vm: Vm): repository.VmConfig {
  return {
    uuid: vm.uuid,
    name: vm.name,
    cluster: vm.cluster,
    powerState: vm.powerState,
    ...(vm.numSockets !== undefined ? { numSockets: vm.numSockets } : {}),
    ...(vm.numVcpusPerSocket !== undefined ? { numVcpusPerSocket: vm.numVcpusPerSocket } : {}),
    ...(vm.memorySizeMib !== undefined ? { memorySizeMib: vm.memorySizeMib } : {}),
    ngt: vm.ngt,
    categories: vm.categories,
    disks: vm.disks,
    nics: vm.nics,
  };
}
