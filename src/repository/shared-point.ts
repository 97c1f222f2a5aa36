/**
 * Restore points written by several processes (the operator's export Jobs, one per disk). The VM lock is NOT
 * held while disks are copied: the run controller guarantees one active run per VM. Instead:
 *
 * - `prepareSharedPoint` (every disk Job calls it; the first one creates) makes the staging folder and its
 *   journal idempotently;
 * - each disk Job writes its image, checksum file and `disk-<i>.result.json` into the folder;
 * - `commitSharedPoint` takes the VM lock briefly, removes leftovers of OTHER dead attempts, builds the manifest
 *   from the result files and commits exactly as a single-process point does (same checks, fsyncs, rename);
 * - `removeSharedPoint` drops a failed attempt's staging folder.
 */
import { access, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { AppError, ErrorCode, throwIfAborted } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { fsError, fsyncPath, writeFileAtomic } from './durable-fs.ts';
import { diskResultName, journalFileName, pointDir, stagingDir, vmDir, type VmRef } from './layout.ts';
import { acquireVmLock } from './lock.ts';
import { DiskResultSchema, diskResultApiVersion, journalApiVersion, type DiskResult, type Journal, type JournalResource, type ManifestDisk } from './manifest.ts';
import { readManifest, type RestorePoint } from './points.ts';
import {
  readJournal,
  stagedCopyTarget,
  StagedPoint,
  sweepLeftoversLocked,
  writeStagedDiskFiles,
  type CommitRequest,
  type DiskImageTarget,
  type Leftover,
  type StagedDisk,
} from './staging.ts';

export interface SharedPointSpec {
  pointId: string;
  parentPointId: string | null;
  /** When the attempt started (the manifest's createdAt). */
  createdAt: Date;
  /** What the attempt owns on Nutanix (the recovery point), so a leftover sweep can release it. */
  resources: JournalResource[];
}

async function pathExists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

async function isCommitted(vm: VmRef, pointId: string): Promise<boolean> {
  return pathExists(join(pointDir(vm, pointId), 'manifest.json'));
}

/** One process's view of a shared staging folder: where its disk goes and where its result is written. */
export class SharedPoint {
  readonly vm: VmRef;
  readonly pointId: string;
  readonly parentPointId: string | null;
  readonly dir: string;

  constructor(vm: VmRef, pointId: string, parentPointId: string | null) {
    this.vm = vm;
    this.pointId = pointId;
    this.parentPointId = parentPointId;
    this.dir = stagingDir(vm, pointId);
  }

  copyTarget(index: number, sizeBytes: number, options: { overlay: boolean; signal?: AbortSignal }): Promise<DiskImageTarget> {
    return stagedCopyTarget(this.dir, this.pointId, this.parentPointId, index, sizeBytes, options);
  }

  /** Checksums first, then the result file (atomically): a result file means the disk is complete. */
  async writeDiskResult(disk: StagedDisk & { overlay: boolean; fullReason?: string }): Promise<DiskResult> {
    const entry = await writeStagedDiskFiles(this.dir, disk);
    const result: DiskResult = { apiVersion: diskResultApiVersion, ...entry, overlay: disk.overlay, ...(disk.fullReason ? { fullReason: disk.fullReason } : {}) };
    await writeFileAtomic(this.dir, diskResultName(disk.index), `${JSON.stringify(result, null, 2)}\n`);
    return result;
  }

  /** The result a previous attempt of this disk left, if complete (a retried Job need not copy again). */
  async readDiskResult(index: number): Promise<DiskResult | undefined> {
    return readDiskResultFile(this.dir, index, { optional: true });
  }
}

async function readDiskResultFile(dir: string, index: number, options: { optional: true }): Promise<DiskResult | undefined>;
async function readDiskResultFile(dir: string, index: number, options: { optional: false }): Promise<DiskResult>;
async function readDiskResultFile(dir: string, index: number, options: { optional: boolean }): Promise<DiskResult | undefined> {
  const path = join(dir, diskResultName(index));
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      if (options.optional) return undefined;
      throw new AppError(ErrorCode.Repository, `disk ${index} has no result in ${dir}`, {
        hint: `the export Job of disk ${index} did not finish; run it (again) before the commit`,
      });
    }
    throw fsError(err, 'read', path);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    raw = undefined;
  }
  const parsed = DiskResultSchema.safeParse(raw);
  if (!parsed.success || parsed.data.index !== index) {
    throw new AppError(ErrorCode.Integrity, `${path} is not a valid disk result`, { hint: `run the export Job of disk ${index} again` });
  }
  return parsed.data;
}

/**
 * Creates the staging folder and journal of a shared point unless they exist (any disk Job may be first; two at
 * once write the same journal, atomically). Refuses a point that is already committed or whose parent is missing.
 */
export async function prepareSharedPoint(vm: VmRef, spec: SharedPointSpec, options: { signal?: AbortSignal; logger?: Logger } = {}): Promise<SharedPoint> {
  throwIfAborted(options.signal, `prepare restore point ${spec.pointId}`);
  if (await isCommitted(vm, spec.pointId)) {
    throw new AppError(ErrorCode.Conflict, `restore point ${spec.pointId} is already committed`, {
      hint: 'a committed point is never rewritten; start a new run for a new point',
    });
  }
  const parentDir = vmDir(vm);
  const dir = stagingDir(vm, spec.pointId);
  try {
    await mkdir(dir, { recursive: true });
  } catch (err) {
    throw fsError(err, 'create', dir);
  }
  const existing = await readJournal(dir);
  if (existing) {
    if ((existing.parentPointId ?? null) !== spec.parentPointId) {
      throw new AppError(ErrorCode.Conflict, `staging of ${spec.pointId} chains onto ${existing.parentPointId ?? 'nothing'}, this request onto ${spec.parentPointId ?? 'nothing'}`, {
        hint: 'every disk of one point must use the same base; clean up the attempt and run it again',
      });
    }
    return new SharedPoint(vm, spec.pointId, spec.parentPointId);
  }
  if (spec.parentPointId !== null) await readManifest(pointDir(vm, spec.parentPointId));
  const journal: Journal = {
    apiVersion: journalApiVersion,
    pointId: spec.pointId,
    clusterUuid: vm.clusterUuid,
    vmUuid: vm.vmUuid,
    pid: process.pid,
    hostname: hostname(),
    startedAt: spec.createdAt.toISOString(),
    parentPointId: spec.parentPointId,
    resources: spec.resources,
  };
  await writeFileAtomic(dir, journalFileName, `${JSON.stringify(journal, null, 2)}\n`);
  await fsyncPath(parentDir);
  options.logger?.info({ vmUuid: vm.vmUuid, pointId: spec.pointId }, 'shared staging prepared');
  return new SharedPoint(vm, spec.pointId, spec.parentPointId);
}

export interface SharedCommitRequest extends Omit<CommitRequest, 'type' | 'typeReason'> {
  /** Why the point is a full when no disk result is an overlay (e.g. "first backup"); the type follows the results. */
  fullTypeReason: string;
  /** Every disk index the point must hold; a missing or extra result refuses the commit. */
  diskIndexes: number[];
  /** Releases what a dead attempt's journal lists on Nutanix; its folder goes only when this resolves. */
  cleanupLeftover: (leftover: Leftover) => Promise<void>;
  logger?: Logger;
}

/**
 * Commits a shared point under the VM lock. Idempotent: when the point is already committed (a retried commit
 * Job), returns it unchanged. The staging folder stays when the commit fails, for a retry or `removeSharedPoint`.
 */
export async function commitSharedPoint(vm: VmRef, pointId: string, request: SharedCommitRequest): Promise<RestorePoint & { leftoversRemoved: string[] }> {
  throwIfAborted(request.signal, `commit of ${pointId}`);
  const lock = await acquireVmLock(vmDir(vm), `commit of ${pointId}`);
  try {
    const sweep = await sweepLeftoversLocked(vm, request.cleanupLeftover, { except: pointId, ...(request.logger ? { logger: request.logger } : {}) });
    const leftoversRemoved = sweep.removed.map((l) => l.pointId);
    const dir = stagingDir(vm, pointId);
    const journal = await readJournal(dir);
    if (!journal) {
      if (await isCommitted(vm, pointId)) {
        const finalDir = pointDir(vm, pointId);
        return { vm, pointId, dir: finalDir, manifest: await readManifest(finalDir), leftoversRemoved };
      }
      throw new AppError(ErrorCode.NotFound, `restore point ${pointId} has no staging folder with a journal`, {
        hint: 'the attempt was cleaned up or its disks never started; run the backup again',
      });
    }
    const expected = [...new Set(request.diskIndexes)].sort((a, b) => a - b);
    const extra = (await readdir(dir)).filter((name) => /^disk-\d+\.result\.json$/.test(name) && !expected.some((i) => diskResultName(i) === name));
    if (extra.length) {
      throw new AppError(ErrorCode.Conflict, `staging of ${pointId} holds results the commit does not expect: ${extra.join(', ')}`, {
        hint: 'list every disk of the point in diskIndexes',
      });
    }
    const disks: ManifestDisk[] = [];
    const fallbacks: string[] = [];
    let overlays = 0;
    for (const index of expected) {
      const { apiVersion: _version, overlay, fullReason, ...entry } = await readDiskResultFile(dir, index, { optional: false });
      disks.push(entry);
      if (overlay) overlays++;
      if (fullReason) fallbacks.push(`disk ${index}: ${fullReason}`);
    }
    const parentPointId = journal.parentPointId ?? null;
    const staged = new StagedPoint(vm, pointId, parentPointId, new Date(journal.startedAt), journal, lock, request.logger, disks);
    const { fullTypeReason, diskIndexes: _indexes, cleanupLeftover: _cleanup, logger: _logger, ...commit } = request;
    const point = await staged.commit({
      ...commit,
      type: overlays > 0 ? 'incremental' : 'full',
      typeReason: [overlays > 0 ? `incremental on ${parentPointId}` : fullTypeReason, ...fallbacks].join('; '),
    });
    return { ...point, leftoversRemoved };
  } finally {
    // commit releases the lock once the point is visible; on any failure it is released here.
    await lock.release();
  }
}

/** Removes a failed attempt's staging folder under the VM lock. Returns whether there was one. */
export async function removeSharedPoint(vm: VmRef, pointId: string, options: { logger?: Logger } = {}): Promise<boolean> {
  const parent = vmDir(vm);
  if (!(await pathExists(parent))) return false;
  const lock = await acquireVmLock(parent, `cleanup of ${pointId}`);
  try {
    const dir = stagingDir(vm, pointId);
    if (!(await pathExists(dir))) return false;
    await rm(dir, { recursive: true, force: true });
    await fsyncPath(parent);
    options.logger?.info({ vmUuid: vm.vmUuid, pointId }, 'staging of a failed attempt removed');
    return true;
  } finally {
    await lock.release();
  }
}
