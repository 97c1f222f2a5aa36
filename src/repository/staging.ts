/**
 * Write side: a restore point is built in `<vm>/.staging-<point-id>/` (a sibling of the final folder, so the
 * relative backing paths resolve in both places) and becomes visible by one rename. Its `journal.json` is
 * written before anything is created on Nutanix and lists what this attempt still owns there, so a run that
 * follows a SIGKILL can delete it (see recoverLeftovers).
 */
import { mkdir, readFile, readdir, rename, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { BlockChecksum, DiskCopyStats } from '../mover/types.ts';
import { AppError, ErrorCode, throwIfAborted } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { writeChecksumsFile, type ByteRange } from './checksums.ts';
import { exists, fsError, fsyncPath, fsyncTree, writeFileAtomic } from './durable-fs.ts';
import {
  diskChecksumsName,
  diskImageName,
  journalFileName,
  manifestFileName,
  newPointId,
  pointDir,
  relativeBackingFile,
  stagingDir,
  stagingPrefix,
  trashPrefix,
  vmDir,
  type VmRef,
} from './layout.ts';
import { acquireVmLock, type HeldLock } from './lock.ts';
import {
  JournalSchema,
  ManifestSchema,
  journalApiVersion,
  manifestApiVersion,
  type Journal,
  type JournalResource,
  type Manifest,
  type ManifestDisk,
  type RecoveryPointRef,
  type VmConfig,
} from './manifest.ts';
import { Qcow2Layer } from '../qcow2/reader.ts';
import { checkImage, createQcow2, type ImageCheck } from './qemu-img.ts';
import { readManifest, type RestorePoint } from './points.ts';

export interface StagedDisk {
  index: number;
  uuid: string;
  logicalSizeBytes: number;
  stats: DiskCopyStats;
  checksums: BlockChecksum[];
  /** Ranges recorded as zeros without transfer (the plan's ZEROED regions). */
  zeroRanges: ByteRange[];
}

/** The image a disk is copied into; structurally copyDisk's `target`. */
export interface DiskImageTarget {
  path: string;
  /** Relative to the image's folder, as written into the qcow2 header. */
  backing?: { relativePath: string; sizeBytes: number };
}

export interface CommitRequest {
  type: Manifest['type'];
  /** Why full or incremental, e.g. "first backup" or "base recovery point gone → full". */
  typeReason: string;
  vm: VmConfig;
  consistency: Manifest['consistency'];
  recoveryPoint: RecoveryPointRef;
  signal?: AbortSignal;
}

/**
 * Virtual size and backing file name from an image's qcow2 header, read in this process: a `qemu-img info` child
 * costs a fork of this (large) process for two header fields. The image's consistency is qemu-img check's job.
 */
async function readImageHeader(path: string): Promise<{ sizeBytes: number; backingFile: string | null }> {
  const layer = await Qcow2Layer.open(path);
  try {
    return { sizeBytes: layer.sizeBytes, backingFile: layer.backingFile ?? null };
  } finally {
    await layer.close();
  }
}

function backingFileOf(pointId: string, parentPointId: string | null, index: number): string {
  if (parentPointId === null) {
    throw new AppError(ErrorCode.Internal, `point ${pointId} has no parent; disk ${index} cannot be an overlay`, {
      hint: 'begin the point with parentPointId to write an incremental',
    });
  }
  return relativeBackingFile(parentPointId, index);
}

/**
 * Where the mover writes disk `index` of the staging folder `dir`, in the shape copyDisk's `target` takes:
 * standalone, or with `overlay` over the parent's image of the same disk, which must exist and have the disk's
 * size (else the engine falls back to a full backup of that disk).
 */
export async function stagedCopyTarget(
  dir: string,
  pointId: string,
  parentPointId: string | null,
  index: number,
  sizeBytes: number,
  options: { overlay: boolean; signal?: AbortSignal },
): Promise<DiskImageTarget> {
  const path = join(dir, diskImageName(index));
  if (!options.overlay) return { path };
  const relativePath = backingFileOf(pointId, parentPointId, index);
  const parentImage = join(dir, relativePath);
  if (!(await exists(parentImage))) {
    throw new AppError(ErrorCode.Repository, `disk ${index}: parent image ${parentImage} does not exist`, {
      hint: 'the previous point has no such disk; back this disk up in full',
    });
  }
  throwIfAborted(options.signal, `disk ${index}: overlay target`);
  const parent = await readImageHeader(parentImage);
  if (parent.sizeBytes !== sizeBytes) {
    throw new AppError(ErrorCode.Repository, `disk ${index}: parent image is ${parent.sizeBytes} bytes, the disk is ${sizeBytes}`, {
      hint: 'a resized disk needs a full backup',
    });
  }
  return { path, backing: { relativePath, sizeBytes } };
}

/**
 * Writes the checksum file of a copied disk into the staging folder `dir`; returns its manifest entry. `sync: false`
 * when the commit that fsyncs the folder runs in this process (another process's commit, possibly on another node
 * of a shared volume, cannot flush this one's writes).
 */
export async function writeStagedDiskFiles(dir: string, disk: StagedDisk, options: { sync?: boolean } = {}): Promise<ManifestDisk> {
  const checksums = diskChecksumsName(disk.index);
  await writeChecksumsFile(join(dir, checksums), disk.index, { blocks: disk.checksums, zeroRanges: disk.zeroRanges }, options);
  return {
    index: disk.index,
    uuid: disk.uuid,
    logicalSizeBytes: disk.logicalSizeBytes,
    image: diskImageName(disk.index),
    backingFile: null,
    stats: disk.stats,
    checksums,
    checksummedBlocks: disk.checksums.length,
    zeroRanges: disk.zeroRanges.length,
  };
}

type CheckOutcome = { check: ImageCheck } | { error: unknown };

export class StagedPoint {
  readonly vm: VmRef;
  readonly pointId: string;
  readonly parentPointId: string | null;
  readonly dir: string;
  readonly createdAt: Date;
  #journal: Journal;
  /** The journal write in flight: writes run one after another, each of the state when it starts. */
  #journalWrite: Promise<void> = Promise.resolve();
  #lock: HeldLock;
  #disks = new Map<number, ManifestDisk>();
  /** qemu-img check of each image recorded by this process, started by writeDisk; the commit awaits them. */
  #checks = new Map<number, Promise<CheckOutcome>>();
  /** Stops checks still running when the attempt is given up. */
  #stopChecks = new AbortController();
  #finished = false;
  #logger: Logger | undefined;

  /** `disks`: manifest entries already written by other processes (multi-process staging, see shared-point.ts). */
  constructor(
    vm: VmRef,
    pointId: string,
    parentPointId: string | null,
    createdAt: Date,
    journal: Journal,
    lock: HeldLock,
    logger?: Logger,
    disks: ManifestDisk[] = [],
  ) {
    this.vm = vm;
    this.pointId = pointId;
    this.parentPointId = parentPointId;
    this.dir = stagingDir(vm, pointId);
    this.createdAt = createdAt;
    this.#journal = journal;
    this.#lock = lock;
    this.#logger = logger;
    for (const disk of disks) this.#disks.set(disk.index, disk);
  }

  get journal(): Journal {
    return structuredClone(this.#journal);
  }

  /** Where the mover writes disk `index` (inside the staging folder). */
  imagePath(index: number): string {
    return join(this.dir, diskImageName(index));
  }

  /** The backing file an incremental overlay of disk `index` must name, relative to its folder. */
  backingFileFor(index: number): string {
    return backingFileOf(this.pointId, this.parentPointId, index);
  }

  /**
   * Where the mover writes disk `index`, in the shape copyDisk's `target` takes: standalone, or with `overlay`
   * over the parent's image of the same disk, which must exist and have the disk's size (else the engine falls
   * back to a full backup of that disk).
   */
  async copyTarget(index: number, sizeBytes: number, options: { overlay: boolean; signal?: AbortSignal }): Promise<DiskImageTarget> {
    return stagedCopyTarget(this.dir, this.pointId, this.parentPointId, index, sizeBytes, options);
  }

  /** Creates the empty image of disk `index` with qemu-img (for writers that fill an existing image). */
  async createDiskImage(index: number, sizeBytes: number, options: { overlay: boolean; signal?: AbortSignal }): Promise<string> {
    const target = await this.copyTarget(index, sizeBytes, options);
    await createQcow2(target.path, sizeBytes, { backingFile: target.backing?.relativePath, signal: options.signal });
    return target.path;
  }

  /**
   * The recovery point request has a known outcome (recorded as a resource, refused outright, or deleted): no
   * recovery point of this attempt can exist on Nutanix beyond the recorded resources.
   */
  async settleRecoveryPointRequest(): Promise<void> {
    delete this.#journal.recoveryPointRequestId;
    await this.#writeJournal();
  }

  /** The requested recovery point exists: recorded, and the request settled, in one journal write. */
  async recordRecoveryPoint(resource: JournalResource): Promise<void> {
    this.#journal.resources.push(resource);
    delete this.#journal.recoveryPointRequestId;
    await this.#writeJournal();
  }

  /** Records something just created on Nutanix (recovery point, volume group, iSCSI attachment). */
  async addResource(resource: JournalResource): Promise<void> {
    this.#journal.resources.push(resource);
    await this.#writeJournal();
  }

  /**
   * Forgets a resource once released on Nutanix. Memory is updated before the file, so `abort` knows the truth
   * even when the file cannot be rewritten (a full filesystem).
   */
  async removeResource(kind: JournalResource['kind'], id: string): Promise<void> {
    this.#journal.resources = this.#journal.resources.filter((r) => !(r.kind === kind && r.id === id));
    await this.#writeJournal();
  }

  /**
   * Writes the checksum file of a copied disk and remembers its manifest entry. The image is complete: its qemu-img
   * check starts now, beside the rest of the backup (other disks, export release), and the commit awaits it.
   */
  async writeDisk(disk: StagedDisk): Promise<void> {
    this.#assertOpen();
    this.#checks.set(disk.index, this.#check(diskImageName(disk.index), this.#stopChecks.signal));
    // Made durable by this process's commit (fsyncTree), beside qemu-img check rather than before the commit.
    this.#disks.set(disk.index, await writeStagedDiskFiles(this.dir, disk, { sync: false }));
  }

  #check(image: string, signal: AbortSignal): Promise<CheckOutcome> {
    return checkImage(join(this.dir, image), signal).then(
      (check) => ({ check }),
      (error: unknown) => ({ error }),
    );
  }

  /**
   * Makes the point visible: checks every image against what was staged (qemu-img check beside the other steps),
   * writes the manifest, fsyncs every file and folder, renames staging → final and fsyncs the VM folder. Refused while volume groups or iSCSI
   * attachments are still recorded: those must be released first.
   */
  async commit(request: CommitRequest): Promise<RestorePoint> {
    this.#assertOpen();
    throwIfAborted(request.signal, `commit of ${this.pointId}`);
    const held = this.#journal.resources.filter((r) => r.kind !== 'recovery-point');
    if (held.length) {
      throw new AppError(ErrorCode.Internal, `commit of ${this.pointId}: ${held.map((r) => `${r.kind} ${r.id}`).join(', ')} not released`, {
        hint: 'release every disk export before committing',
      });
    }
    const disks = [...this.#disks.values()].sort((a, b) => a.index - b.index);
    if (disks.length === 0) throw new AppError(ErrorCode.Internal, `commit of ${this.pointId}: no disk was written`);
    // qemu-img check (a child process each) runs beside the manifest write and the fsyncs: only the rename into
    // place, which makes the point visible, waits for it. A staging folder with a manifest is still no point. Disks
    // recorded by other processes (shared-point.ts) are checked from here.
    const signal = request.signal ? AbortSignal.any([request.signal, this.#stopChecks.signal]) : this.#stopChecks.signal;
    const checks = disks.map((disk) => this.#checks.get(disk.index) ?? this.#check(disk.image, signal));
    try {
      let manifest: Manifest;
      try {
        manifest = await this.#stageManifest(disks, request);
      } catch (err) {
        // A damaged image is better told by qemu-img check than by the header read.
        await this.#assertChecked(disks, checks);
        throw err;
      }
      await fsyncTree(this.dir);
      await this.#assertChecked(disks, checks);
      throwIfAborted(request.signal, `commit of ${this.pointId}`);
      return await this.#publish(manifest);
    } finally {
      await Promise.all(checks);
    }
  }

  /** Reads each image's header, then writes the manifest into the staging folder (fsynced with the folder after). */
  async #stageManifest(disks: ManifestDisk[], request: CommitRequest): Promise<Manifest> {
    const headers = await Promise.all(disks.map((disk) => readImageHeader(join(this.dir, disk.image))));
    disks.forEach((disk, i) => {
      const header = headers[i] as Awaited<ReturnType<typeof readImageHeader>>;
      if (header.sizeBytes !== disk.logicalSizeBytes) {
        throw new AppError(ErrorCode.Integrity, `disk ${disk.index}: image is ${header.sizeBytes} bytes, expected ${disk.logicalSizeBytes}`);
      }
      disk.backingFile = header.backingFile;
      if (disk.backingFile !== null && disk.backingFile !== this.backingFileFor(disk.index)) {
        throw new AppError(ErrorCode.Integrity, `disk ${disk.index}: backing file ${disk.backingFile} is not the parent's image`, {
          hint: `an overlay must name ${this.backingFileFor(disk.index)} (relative) as its backing file`,
        });
      }
    });
    const parsed = ManifestSchema.safeParse({
      apiVersion: manifestApiVersion,
      pointId: this.pointId,
      parentPointId: disks.some((d) => d.backingFile !== null) ? this.parentPointId : null,
      type: request.type,
      typeReason: request.typeReason,
      createdAt: this.createdAt.toISOString(),
      completedAt: new Date().toISOString(),
      vm: request.vm,
      consistency: request.consistency,
      recoveryPoint: request.recoveryPoint,
      disks,
    } satisfies Manifest);
    if (!parsed.success) {
      throw new AppError(ErrorCode.InvalidInput, `commit of ${this.pointId}: the manifest is invalid: ${parsed.error.message}`, {
        hint: 'pass the VM config, consistency and recovery point as the manifest schema describes (src/repository/manifest.ts)',
      });
    }
    const manifest = parsed.data;
    if ((manifest.type === 'full') !== (manifest.parentPointId === null)) {
      throw new AppError(ErrorCode.Internal, `commit of ${this.pointId}: type ${manifest.type} but ${manifest.parentPointId ? 'disks are overlays' : 'no disk is an overlay'}`);
    }
    await writeFileAtomic(this.dir, manifestFileName, `${JSON.stringify(manifest, null, 2)}\n`, { deferSync: true });
    return manifest;
  }

  async #assertChecked(disks: ManifestDisk[], checks: Promise<CheckOutcome>[]): Promise<void> {
    const outcomes = await Promise.all(checks);
    outcomes.forEach((outcome, i) => {
      if ('error' in outcome) throw outcome.error;
      if (!outcome.check.ok) {
        throw new AppError(ErrorCode.Integrity, `disk ${disks[i]?.index}: qemu-img check of the new image fails: ${outcome.check.message}`, {
          hint: 'the image writer produced a damaged qcow2; the point is not committed',
        });
      }
    });
  }

  /** Renames staging → final (the point is visible from then on) and fsyncs the VM folder. */
  async #publish(manifest: Manifest): Promise<RestorePoint> {
    const finalDir = pointDir(this.vm, this.pointId);
    try {
      await rename(this.dir, finalDir);
    } catch (err) {
      throw fsError(err, 'rename into place', finalDir);
    }
    // Visible from here on, whatever happens next.
    this.#finished = true;
    try {
      await fsyncPath(vmDir(this.vm));
    } finally {
      await this.#lock.release();
    }
    this.#logger?.info({ vmUuid: this.vm.vmUuid, pointId: this.pointId, type: manifest.type, parentPointId: manifest.parentPointId }, 'restore point committed');
    return { vm: this.vm, pointId: this.pointId, dir: finalDir, manifest };
  }

  /**
   * Gives up the attempt. The staging folder is removed when the journal lists nothing left on Nutanix;
   * otherwise it stays for recoverLeftovers. Returns whether it was removed.
   */
  async abort(): Promise<boolean> {
    if (this.#finished) return false;
    this.#finished = true;
    this.#stopChecks.abort();
    await Promise.all(this.#checks.values());
    try {
      // An unsettled request may have created a recovery point whose id we never learned: the next run finds it by name.
      if (this.#journal.resources.length > 0 || this.#journal.recoveryPointRequestId !== undefined) {
        this.#logger?.warn({ pointId: this.pointId, resources: this.#journal.resources }, 'restore point aborted; staging kept for leftover cleanup');
        return false;
      }
      await rm(this.dir, { recursive: true, force: true });
      this.#logger?.info({ pointId: this.pointId }, 'restore point aborted; staging removed');
      return true;
    } finally {
      await this.#lock.release();
    }
  }

  #assertOpen(): void {
    if (this.#finished) throw new AppError(ErrorCode.Internal, `point ${this.pointId} is already committed or aborted`);
  }

  /**
   * Callers may start a write without awaiting it (the engine records the recovery point while the disks are
   * planned): writes are queued so an older state never lands after a newer one.
   */
  async #writeJournal(): Promise<void> {
    const write = this.#journalWrite.catch(() => undefined).then(() => writeFileAtomic(this.dir, journalFileName, `${JSON.stringify(this.#journal, null, 2)}\n`));
    this.#journalWrite = write;
    await write;
  }
}

/**
 * Starts a restore point: takes the VM lock (held until commit/abort), creates the staging folder and writes its
 * journal first. `parentPointId` is the committed point incrementals chain onto, or null for a full.
 * `recoveryPointRequestId` goes into that first journal write (the idempotency key must be durable before the request, so a crash during the call is covered), so
 * the recovery point can be requested without another one; a caller that ends up not sending the request settles it.
 */
export async function beginPoint(
  vm: VmRef,
  options: { parentPointId: string | null; recoveryPointRequestId?: string; now?: Date; signal?: AbortSignal; logger?: Logger },
): Promise<StagedPoint> {
  throwIfAborted(options.signal, 'begin restore point');
  const dir = vmDir(vm);
  try {
    await mkdir(dir, { recursive: true });
  } catch (err) {
    throw fsError(err, 'create', dir);
  }
  const lock = await acquireVmLock(dir, `backup of VM ${vm.vmUuid}`);
  try {
    if (options.parentPointId !== null) await readManifest(pointDir(vm, options.parentPointId));
    const createdAt = options.now ?? new Date();
    const pointId = newPointId(createdAt);
    const journal: Journal = {
      apiVersion: journalApiVersion,
      pointId,
      clusterUuid: vm.clusterUuid,
      vmUuid: vm.vmUuid,
      pid: process.pid,
      hostname: hostname(),
      startedAt: createdAt.toISOString(),
      ...(options.recoveryPointRequestId !== undefined ? { recoveryPointRequestId: options.recoveryPointRequestId } : {}),
      resources: [],
    };
    const staged = new StagedPoint(vm, pointId, options.parentPointId, createdAt, journal, lock, options.logger);
    try {
      await mkdir(staged.dir);
    } catch (err) {
      throw fsError(err, 'create', staged.dir);
    }
    try {
      await writeFileAtomic(staged.dir, journalFileName, `${JSON.stringify(journal, null, 2)}\n`);
      await fsyncPath(dir);
    } catch (err) {
      await rm(staged.dir, { recursive: true, force: true });
      throw err;
    }
    return staged;
  } catch (err) {
    await lock.release();
    throw err;
  }
}

export interface Leftover {
  /** The staging folder of the dead attempt. */
  dir: string;
  pointId: string;
  /** Undefined when the journal is missing or unreadable (the attempt died before or while writing it). */
  journal: Journal | undefined;
}

export interface LeftoverReport {
  removed: Leftover[];
  /** Leftovers whose cleanup callback failed; their folders stay for the next run. */
  kept: { leftover: Leftover; error: unknown }[];
  /** Trash folders of interrupted deletions, removed. */
  trashRemoved: number;
}

export async function readJournal(dir: string): Promise<Journal | undefined> {
  try {
    const parsed = JournalSchema.safeParse(JSON.parse(await readFile(join(dir, journalFileName), 'utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Cleans up after attempts that died (SIGKILL, power loss). Under the VM lock, each staging folder is handed to
 * `cleanup` with its journal, so the engine deletes the recorded recovery point, volume groups and iSCSI
 * attachments on Nutanix; the folder is removed only when `cleanup` resolves. Holding the lock guarantees no
 * live attempt owns any of these folders.
 */
export async function recoverLeftovers(
  vm: VmRef,
  cleanup: (leftover: Leftover) => Promise<void>,
  options: { logger?: Logger } = {},
): Promise<LeftoverReport> {
  const dir = vmDir(vm);
  if (!(await exists(dir))) return { removed: [], kept: [], trashRemoved: 0 };
  const lock = await acquireVmLock(dir, `cleanup of VM ${vm.vmUuid}`);
  try {
    return await sweepLeftoversLocked(vm, cleanup, options);
  } finally {
    await lock.release();
  }
}

/** recoverLeftovers' work, for a caller that already holds the VM lock; `except` names a live staging point to skip. */
export async function sweepLeftoversLocked(
  vm: VmRef,
  cleanup: (leftover: Leftover) => Promise<void>,
  options: { logger?: Logger; except?: string } = {},
): Promise<LeftoverReport> {
  const dir = vmDir(vm);
  const report: LeftoverReport = { removed: [], kept: [], trashRemoved: 0 };
  // Listed under the lock: an attempt that committed or aborted meanwhile is not mistaken for a leftover.
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw fsError(err, 'list', dir);
  }
  for (const name of names) {
    const path = join(dir, name);
    if (name.startsWith(trashPrefix)) {
      await rm(path, { recursive: true, force: true });
      report.trashRemoved++;
      continue;
    }
    if (!name.startsWith(stagingPrefix) || name === `${stagingPrefix}${options.except}`) continue;
    const leftover: Leftover = { dir: path, pointId: name.slice(stagingPrefix.length), journal: await readJournal(path) };
    try {
      await cleanup(leftover);
    } catch (error) {
      options.logger?.warn({ pointId: leftover.pointId, err: error }, 'leftover cleanup failed; staging kept for the next run');
      report.kept.push({ leftover, error });
      continue;
    }
    await rm(path, { recursive: true, force: true });
    options.logger?.info({ pointId: leftover.pointId, resources: leftover.journal?.resources }, 'leftover of a dead attempt removed');
    report.removed.push(leftover);
  }
  if (report.removed.length || report.trashRemoved) await fsyncPath(dir);
  return report;
}
