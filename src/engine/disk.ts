/**
 * One disk of one backup: plan (changed regions against the base, or allocated regions for a full), export the
 * disk recovery point, serve it with qemu-nbd and copy the plan into a QCOW2 image. Shared by the CLI backup
 * (all disks in one process) and the operator's per-disk export Jobs.
 */
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { copyDisk } from '../mover/copy-disk.ts';
import { tuningFor, type StorageTier } from '../mover/tiers.ts';
import { RegionType, type BlockChecksum, type DiskCopyProgress, type DiskCopyStats, type Region } from '../mover/types.ts';
import type { ChangedRegionsRequest, DiskRecoveryPoint, PreparedExport, PrismClient, RecoveryPoint, VmDisk } from '../prism/types.ts';
import type { QemuNbdServer } from '../nbd/qemu-nbd.ts';
import { serveDiskExport } from './disk-source.ts';
import { timed } from './timing.ts';

export interface DiskProgressEvent extends DiskCopyProgress {
  diskIndex: number;
  phase: 'planning' | 'copying' | 'done';
}

/** Where the image goes: standalone, or an overlay on the previous point's image of the disk. */
export type DiskTarget = (overlay: boolean) => Promise<{ path: string; backing?: { relativePath: string; sizeBytes: number } }>;

export interface DiskBackupRequest {
  prism: PrismClient;
  recoveryPoint: RecoveryPoint;
  disk: VmDisk;
  /** The same disk in the previous restore point, whose recovery point still exists. */
  base?: { recoveryPoint: RecoveryPoint; diskUuid: string; sizeBytes: number };
  /** Why there is no base although the point is incremental (e.g. "new disk"). */
  noBaseReason?: string;
  target: DiskTarget;
  initiatorName: string;
  /** Marks the export so its volume group can be released by its owner after a crash (the operator uses the run's uid). */
  exportTag?: string;
  /** An export volume group being made ahead (prism.prepareExport) for this disk; undefined: none could be. */
  preparedExport?: Promise<PreparedExport | undefined>;
  tier?: StorageTier;
  tuning?: { requestSize?: number; inFlight?: number };
  /** CRT block size asked of Prism (v4: 32-256 KiB). */
  changedRegionBlockSize?: number;
  signal: AbortSignal;
  log: Logger;
  onProgress?: (event: DiskProgressEvent) => void;
  /**
   * Return right after the copy and release the export in the background (qemu-nbd stopped; v4: volume group
   * detached and deleted): the result's `released` settles when that is done, and the caller must await it (e.g.
   * while it commits). Otherwise backupDisk returns once the export is released.
   */
  deferRelease?: boolean;
}

/** Milliseconds spent in each step of one disk (the steps may overlap: planning runs beside the export set-up). */
export interface DiskPhaseTimings {
  /** Changed (or allocated) regions gathered from Prism. */
  planMs: number;
  /** Export made readable: Prism export (v4: volume group, disk, iSCSI attach) and qemu-nbd serving it. */
  exportSetupMs: number;
  /** The target image created (an overlay: on the previous point's image). */
  targetMs: number;
  copyMs: number;
  /** qemu-nbd stopped and the export released (v4: detach, volume group deleted). */
  exportTeardownMs: number;
}

export interface DiskBackupResult {
  overlay: boolean;
  /** Why this disk was copied in full although the point is incremental. */
  fullReason?: string;
  stats: DiskCopyStats;
  checksums: BlockChecksum[];
  /** The plan's ZEROED ranges, recorded (not transferred) so verify can check they read as zeros. */
  zeroRanges: { offset: number; length: number }[];
  /** With deferRelease, exportTeardownMs is 0 here and comes from `released`. */
  timings: DiskPhaseTimings;
  /** With deferRelease: the teardown's duration (ms) once the export is released; rejects if it could not be. */
  released?: Promise<number>;
}

function diskRecoveryPointOf(rp: RecoveryPoint, diskUuid: string): DiskRecoveryPoint {
  const found = rp.disks.find((d) => d.diskUuid === diskUuid);
  if (!found) {
    throw new AppError(ErrorCode.BadResponse, `recovery point ${rp.id} has no disk recovery point for disk ${diskUuid}`, {
      hint: 'the VM changed during the backup; run it again',
      retryable: true,
    });
  }
  return found;
}

/** The whole plan is gathered before copying, so a CRT failure can still turn into a full and progress has a total. */
async function collectRegions(prism: PrismClient, request: ChangedRegionsRequest): Promise<Region[]> {
  const regions: Region[] = [];
  for await (const region of prism.changedRegions(request)) regions.push(region);
  return regions;
}

async function planDisk(request: DiskBackupRequest, diskRp: DiskRecoveryPoint): Promise<{ regions: Region[]; overlay: boolean; fullReason?: string }> {
  const { prism, recoveryPoint, disk, base, signal } = request;
  const blockSize = request.changedRegionBlockSize;
  const full = async (fullReason?: string) => ({
    regions: await collectRegions(prism, { recoveryPoint, disk: diskRp, ...(blockSize ? { blockSize } : {}), signal }),
    overlay: false,
    ...(fullReason ? { fullReason } : {}),
  });
  if (!base) return full(request.noBaseReason);
  if (base.diskUuid !== disk.uuid) return full('new disk');
  if (base.sizeBytes !== disk.sizeBytes) return full(`disk resized from ${base.sizeBytes} to ${disk.sizeBytes} bytes`);
  const baseDisk = base.recoveryPoint.disks.find((d) => d.diskUuid === disk.uuid);
  if (!baseDisk) return full('the base recovery point has no such disk');
  try {
    const regions = await collectRegions(prism, {
      recoveryPoint,
      disk: diskRp,
      reference: { recoveryPoint: base.recoveryPoint, disk: baseDisk },
      ...(blockSize ? { blockSize } : {}),
      signal,
    });
    return { regions, overlay: true };
  } catch (err) {
    if (signal.aborted || (isAppError(err) && err.code === ErrorCode.Aborted)) throw err;
    return full(`changed-region tracking failed (${err instanceof Error ? err.message : String(err)})`);
  }
}

/** The export of one disk recovery point, served by qemu-nbd. */
interface OpenSource {
  server: QemuNbdServer;
  /** Stops qemu-nbd, then releases the export (v4: detach, delete the volume group). */
  close(): Promise<void>;
}

async function openSource(request: DiskBackupRequest, diskRp: DiskRecoveryPoint, signal: AbortSignal): Promise<OpenSource> {
  const { prism, recoveryPoint, initiatorName, exportTag } = request;
  const prepared = await request.preparedExport;
  const diskExport = await prism.exportDisk({ recoveryPoint, disk: diskRp, initiatorName, ...(exportTag ? { exportTag } : {}), ...(prepared ? { prepared } : {}), signal });
  let server: QemuNbdServer;
  try {
    server = await serveDiskExport(diskExport, initiatorName, signal);
  } catch (err) {
    await diskExport.release();
    throw err;
  }
  return {
    server,
    close: async () => {
      try {
        await server.stop();
      } finally {
        await diskExport.release();
      }
    },
  };
}

/**
 * Runs the plan and the export set-up at once (v4: the CRT queries beside three Prism tasks and the iSCSI login):
 * neither needs the other. On the first failure the other is stopped, both settle, an export already open is
 * released, and that first failure is thrown.
 */
async function planAndOpen(request: DiskBackupRequest, diskRp: DiskRecoveryPoint) {
  const stop = new AbortController();
  const signal = AbortSignal.any([request.signal, stop.signal]);
  let firstFailure: { error: unknown } | undefined;
  const stopOnFailure = <T>(work: Promise<T>): Promise<T> =>
    work.catch((error: unknown) => {
      firstFailure ??= { error };
      stop.abort(error);
      throw error;
    });
  const [planned, opened] = await Promise.allSettled([
    stopOnFailure(
      (async () => {
        const plan = await timed(() => planDisk({ ...request, signal }, diskRp));
        const target = await timed(() => request.target(plan.value.overlay));
        return { plan: plan.value, planMs: plan.ms, target: target.value, targetMs: target.ms };
      })(),
    ),
    stopOnFailure(timed(() => openSource(request, diskRp, signal))),
  ]);
  if (planned.status === 'fulfilled' && opened.status === 'fulfilled') return { ...planned.value, source: opened.value.value, exportSetupMs: opened.value.ms };
  if (opened.status === 'fulfilled') await opened.value.value.close();
  throw firstFailure?.error;
}

export async function backupDisk(request: DiskBackupRequest): Promise<DiskBackupResult> {
  const { disk, signal, log } = request;
  const report = (phase: DiskProgressEvent['phase'], progress: DiskCopyProgress) => request.onProgress?.({ diskIndex: disk.index, phase, ...progress });
  report('planning', { doneBytes: 0, totalBytes: 0, transferredBytes: 0 });
  const diskRp = diskRecoveryPointOf(request.recoveryPoint, disk.uuid);
  const tuning = tuningFor(request.tier, request.tuning ?? {});
  const { plan, planMs, target, targetMs, source, exportSetupMs } = await planAndOpen(request, diskRp);
  const { server } = source;

  let copied: Awaited<ReturnType<typeof copyDisk>>;
  let copyMs: number;
  try {
    ({ value: copied, ms: copyMs } = await timed(() =>
      copyDisk({
        source: { socketPath: server.socketPath },
        exportName: server.exportName,
        regions: plan.regions,
        sizeBytes: disk.sizeBytes,
        target,
        requestSize: tuning.requestSize,
        inFlight: tuning.inFlight,
        signal,
        onProgress: (progress) => report('copying', progress),
      }),
    ));
  } catch (err) {
    // A dead qemu-nbd explains a broken copy better than the socket error does.
    const detail = server.stderr().trim();
    await source.close();
    if (detail && isAppError(err) && err.code === ErrorCode.DataPath) {
      throw new AppError(err.code, `${err.message}; qemu-nbd: ${detail}`, { cause: err, ...(err.hint ? { hint: err.hint } : {}) });
    }
    throw err;
  }
  const teardown = timed(() => source.close()).then(({ ms }) => ms);
  const { stats, checksums } = copied;
  report('done', { doneBytes: stats.changedBytes, totalBytes: stats.changedBytes, transferredBytes: stats.transferredBytes });
  log.info({ disk: disk.index, overlay: plan.overlay, fullReason: plan.fullReason, stats }, 'disk copied');
  const result = {
    overlay: plan.overlay,
    ...(plan.fullReason ? { fullReason: plan.fullReason } : {}),
    stats,
    checksums,
    zeroRanges: plan.regions.filter((r) => r.type === RegionType.Zeroed).map(({ offset, length }) => ({ offset, length })),
  };
  if (request.deferRelease) return { ...result, timings: { planMs, exportSetupMs, targetMs, copyMs, exportTeardownMs: 0 }, released: teardown };
  return { ...result, timings: { planMs, exportSetupMs, targetMs, copyMs, exportTeardownMs: await teardown } };
}
