/**
 * `mover disk`: copies one disk of one run into the shared staging folder of its restore point, reporting
 * progress to the VMBackupRun every few seconds. The recovery point exists already (the controller made it); this
 * process only plans, exports, copies and writes the disk's result file.
 */
import { backupDisk, type DiskProgressEvent } from '../engine/disk.ts';
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import type { PrismClient } from '../prism/types.ts';
import { prepareSharedPoint, type DiskResult, type SharedPoint } from '../repository/index.ts';
import type { DiskJobResult, DiskRequest } from './contract.ts';
import { diskFailurePatch, diskStatusPatch, patchStatusReliably, ProgressReporter, type DiskFigures, type RunStatusWriter } from './run-status.ts';
import { repositoryVm } from './runtime.ts';

export interface DiskJobDeps {
  prism: PrismClient;
  status: RunStatusWriter;
  log: Logger;
  signal: AbortSignal;
  /** Copy attempts for failures Prism or the data path call retryable (default 3). */
  attempts?: number;
}

function progressFigures(event: DiskProgressEvent, sizeBytes: number, startedAt: number): DiskFigures {
  const seconds = (Date.now() - startedAt) / 1000;
  return {
    sizeBytes,
    changedBytes: event.totalBytes,
    transferredBytes: event.transferredBytes,
    progressPercent: event.totalBytes > 0 ? Math.min(99, Math.floor((100 * event.doneBytes) / event.totalBytes)) : 0,
    ...(seconds > 0 ? { throughputBytesPerSecond: event.transferredBytes / seconds } : {}),
  };
}

function resultOf(result: DiskResult, reused: boolean): DiskJobResult {
  return {
    kind: 'disk',
    diskIndex: result.index,
    diskUuid: result.uuid,
    overlay: result.overlay,
    ...(result.fullReason ? { fullReason: result.fullReason } : {}),
    ...result.stats,
    reused,
  };
}

/** One copy, retried while the failure is transient; copyDisk deletes a partial image before it throws. */
async function copyWithRetries(request: DiskRequest, point: SharedPoint, deps: DiskJobDeps, reporter: ProgressReporter): Promise<DiskResult> {
  const attempts = deps.attempts ?? 3;
  for (let attempt = 1; ; attempt++) {
    const startedAt = Date.now();
    try {
      const copied = await backupDisk({
        prism: deps.prism,
        recoveryPoint: request.recoveryPoint,
        disk: request.disk,
        ...(request.base ? { base: request.base } : {}),
        ...(request.noBaseReason ? { noBaseReason: request.noBaseReason } : {}),
        target: (overlay) => point.copyTarget(request.disk.index, request.disk.sizeBytes, { overlay, signal: deps.signal }),
        initiatorName: request.initiatorName,
        ...(request.exportTag ? { exportTag: request.exportTag } : {}),
        ...(request.tier ? { tier: request.tier } : {}),
        ...(request.tuning ? { tuning: request.tuning } : {}),
        ...(request.changedRegionBlockSize ? { changedRegionBlockSize: request.changedRegionBlockSize } : {}),
        signal: deps.signal,
        log: deps.log,
        onProgress: (event) => reporter.update(progressFigures(event, request.disk.sizeBytes, startedAt), event.phase),
      });
      return await point.writeDiskResult({
        index: request.disk.index,
        uuid: request.disk.uuid,
        logicalSizeBytes: request.disk.sizeBytes,
        stats: copied.stats,
        checksums: copied.checksums,
        zeroRanges: copied.zeroRanges,
        overlay: copied.overlay,
        ...(copied.fullReason ? { fullReason: copied.fullReason } : {}),
      });
    } catch (err) {
      const retry = isAppError(err) && err.retryable && err.code !== ErrorCode.Aborted && !deps.signal.aborted && attempt < attempts;
      if (!retry) throw err;
      deps.log.warn({ disk: request.disk.index, attempt, err: err.message }, 'disk copy failed; retrying');
    }
  }
}

/**
 * Runs one disk Job. On failure the reason is also written to `/status/disks/<i>/failureReason` (best effort, even
 * after an abort), so it reaches the run without reading Pods.
 */
export async function runDiskJob(request: DiskRequest, deps: DiskJobDeps): Promise<DiskJobResult> {
  try {
    return await exportDisk(request, deps);
  } catch (err) {
    const reason = isAppError(err) ? err.oneLine() : err instanceof Error ? err.message : String(err);
    await deps.status.patchStatus(diskFailurePatch(request.statusIndex, request.disk.uuid, reason), AbortSignal.timeout(10_000)).catch((patchErr: unknown) => {
      deps.log.warn({ err: patchErr instanceof Error ? patchErr.message : String(patchErr) }, 'failure reason not reported to the run');
    });
    throw err;
  }
}

async function exportDisk(request: DiskRequest, deps: DiskJobDeps): Promise<DiskJobResult> {
  const { disk } = request;
  if (!request.recoveryPoint.disks.some((d) => d.diskUuid === disk.uuid)) {
    throw new AppError(ErrorCode.InvalidInput, `recoveryPoint has no disk recovery point for disk ${disk.uuid}`, {
      hint: 'recoveryPoint.disks must include request.disk.uuid',
    });
  }
  const point = await prepareSharedPoint(
    repositoryVm(request),
    {
      pointId: request.pointId,
      parentPointId: request.parentPointId,
      createdAt: new Date(request.createdAt),
      resources: [{ kind: 'recovery-point', id: request.recoveryPoint.id, detail: { generation: request.recoveryPoint.generation } }],
    },
    { signal: deps.signal, logger: deps.log },
  );
  // A retried Job whose previous attempt finished the disk (and died before reporting) does not copy again.
  const previous = await point.readDiskResult(disk.index);
  const reusable = previous?.uuid === disk.uuid && previous.logicalSizeBytes === disk.sizeBytes;
  const reporter = new ProgressReporter(deps.status, request.statusIndex, disk.uuid, request.progressIntervalSeconds * 1000, deps.log, deps.signal);
  let result: DiskResult;
  try {
    result = reusable && previous ? previous : await copyWithRetries(request, point, deps, reporter);
  } finally {
    await reporter.stop();
  }
  const { stats } = result;
  await patchStatusReliably(
    deps.status,
    diskStatusPatch(request.statusIndex, disk.uuid, {
      sizeBytes: disk.sizeBytes,
      changedBytes: stats.changedBytes,
      transferredBytes: stats.transferredBytes,
      zeroBytes: stats.zeroBytes,
      progressPercent: 100,
      throughputBytesPerSecond: stats.throughputBytesPerSec,
    }),
    deps.signal,
  );
  deps.log.info({ disk: disk.index, reused: reusable, progressReports: reporter.sentCount, stats }, 'disk exported');
  return resultOf(result, reusable);
}
