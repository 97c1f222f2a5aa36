/**
 * Writes a QCOW2 v3 image directly, without qemu: data clusters are appended in guest order with one pwrite
 * per call, each L2 table is appended once the writes have moved past its range, and the L1 table, the
 * refcount structures and finally the header are written at finalize. Until finalize the header cluster is
 * zeros, so a partial file is never a valid image.
 *
 * File layout: [header cluster][L1 table][data and L2 clusters, in write order][refcount blocks][refcount table]
 * Every cluster in the file is referenced exactly once, so all refcounts are 1 and there are no leaks.
 */
import { constants } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { AppError, ErrorCode } from '../lib/errors.ts';
import {
  HEADER_LENGTH,
  HeaderExtension,
  L2_ZERO_FLAG,
  OFLAG_COPIED_HIGH,
  QCOW2_MAGIC,
  QCOW2_VERSION,
  REFCOUNT_BYTES,
  REFCOUNT_ORDER,
  clusterBitsOf,
  writeEntry,
} from './format.ts';

export interface Qcow2WriterOptions {
  path: string;
  /** Guest size in bytes; any byte count. */
  sizeBytes: number;
  /** Power of two, 512 B … 2 MiB; default 64 KiB. */
  clusterSize?: number;
  /** Makes the image an overlay: unallocated clusters read through to this file. */
  backing?: { relativePath: string; format?: 'qcow2' | 'raw' };
  /**
   * Start an fdatasync in the background after this many bytes, so the disk writes while we copy instead of
   * all at finalize. 0 disables it.
   */
  syncEveryBytes?: number;
  /**
   * Write data clusters with O_DIRECT (default true): no page-cache copy and no dirty-page build-up, so the
   * disk streams at its own rate. Needs 4 KiB-aligned buffers (see alignedBuffers); anything else, and
   * filesystems without O_DIRECT, silently take the page cache.
   */
  direct?: boolean;
}

/** Declared here because the project's type libraries (es2024 + node) leave WebAssembly out. */
declare const WebAssembly: { Memory: new (descriptor: { initial: number }) => { buffer: ArrayBuffer } };

/** O_DIRECT needs buffer addresses aligned to the device block: slices of one WebAssembly memory are page aligned. */
export function alignedBuffers(count: number, size: number): Buffer[] {
  const pageSize = 65536;
  const stride = Math.ceil(size / 4096) * 4096;
  const memory = new WebAssembly.Memory({ initial: Math.max(1, Math.ceil((count * stride) / pageSize)) });
  return Array.from({ length: count }, (_, i) => Buffer.from(memory.buffer, i * stride, size));
}

const DIRECT_ALIGN = 4096;

/** A guest range for writeRuns: bytes to store, or whole clusters that read as zeros. */
export type GuestRun = { guestOffset: number; data: Buffer } | { guestOffset: number; zeroes: number };

export interface Qcow2WriteSummary {
  fileBytes: number;
  dataClusters: number;
  zeroClusters: number;
  l2Tables: number;
}

export const DEFAULT_CLUSTER_SIZE = 64 * 1024;
const DEFAULT_SYNC_EVERY = 256 * 1024 * 1024;

function invalid(message: string, hint: string): AppError {
  return new AppError(ErrorCode.InvalidInput, message, { hint });
}

function ioError(err: unknown, what: string, file: string): AppError {
  const code = (err as { code?: string }).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new AppError(ErrorCode.NoSpace, `${what} ${file}: no space left`, { hint: 'free space in the repository or grow its volume', cause: err });
  }
  if (code === 'EEXIST') {
    return new AppError(ErrorCode.Conflict, `${what} ${file}: the file already exists`, { hint: 'remove the stale partial image or write to a new path', cause: err });
  }
  return new AppError(ErrorCode.Repository, `${what} ${file}: ${(err as Error).message}`, { hint: 'check the repository filesystem', cause: err });
}

export class Qcow2Writer {
  readonly path: string;
  readonly sizeBytes: number;
  readonly clusterSize: number;
  private readonly clusterBits: number;
  private readonly backing: { relativePath: string; format: 'qcow2' | 'raw' } | undefined;
  private readonly file: FileHandle;
  /** Second handle opened with O_DIRECT for data clusters; undefined when not usable. */
  private directFile: FileHandle | undefined;
  private readonly l2Entries: number;
  private readonly l1: Buffer;
  private readonly l1Offset: number;
  /** Next free host offset; always cluster aligned. */
  private nextFree: number;
  /** Guest offset below which nothing may be written any more. */
  private guestCursor = 0;
  private l2Index = -1;
  private l2Table: Buffer;
  private l2Dirty = false;
  private dataClusters = 0;
  private zeroClusters = 0;
  private l2Tables = 0;
  private readonly syncEvery: number;
  private bytesSinceSync = 0;
  private backgroundSync: Promise<void> | undefined;
  private state: 'open' | 'finalized' | 'abandoned' = 'open';
  private refcountTable = { offset: 0, clusters: 0 };

  private constructor(options: Required<Pick<Qcow2WriterOptions, 'path' | 'sizeBytes' | 'clusterSize'>> & Qcow2WriterOptions, file: FileHandle, directFile: FileHandle | undefined) {
    this.path = options.path;
    this.sizeBytes = options.sizeBytes;
    this.clusterSize = options.clusterSize;
    this.clusterBits = clusterBitsOf(options.clusterSize);
    this.backing = options.backing ? { relativePath: options.backing.relativePath, format: options.backing.format ?? 'qcow2' } : undefined;
    this.file = file;
    this.directFile = directFile;
    this.l2Entries = this.clusterSize / 8;
    const l1Size = Math.max(1, Math.ceil(this.sizeBytes / (this.clusterSize * this.l2Entries)));
    this.l1 = Buffer.alloc(this.roundUp(l1Size * 8));
    this.l1Offset = this.clusterSize;
    this.nextFree = this.l1Offset + this.l1.length;
    this.l2Table = Buffer.alloc(this.clusterSize);
    this.syncEvery = options.syncEveryBytes ?? DEFAULT_SYNC_EVERY;
  }

  /** Creates the file (never overwrites one). */
  static async create(options: Qcow2WriterOptions): Promise<Qcow2Writer> {
    const clusterSize = options.clusterSize ?? DEFAULT_CLUSTER_SIZE;
    if (clusterBitsOf(clusterSize) < 0) throw invalid(`cluster size ${clusterSize} is not supported`, 'use a power of two from 512 B to 2 MiB, e.g. 65536');
    if (!Number.isSafeInteger(options.sizeBytes) || options.sizeBytes <= 0) throw invalid(`image size ${options.sizeBytes} is invalid`, 'sizeBytes must be a positive integer');
    if (options.backing && (options.backing.relativePath.length === 0 || Buffer.byteLength(options.backing.relativePath) > 1023)) {
      throw invalid(`backing path "${options.backing.relativePath}" is invalid`, 'give the backing image path relative to the overlay, 1-1023 bytes');
    }
    const headerRoom = HEADER_LENGTH + 16 + 8 + 8 + Buffer.byteLength(options.backing?.relativePath ?? '');
    if (headerRoom > clusterSize) throw invalid(`backing path "${options.backing?.relativePath}" does not fit the header cluster`, 'use a shorter relative path or a larger cluster size');
    let file: FileHandle;
    try {
      file = await open(options.path, 'wx');
    } catch (err) {
      throw ioError(err, 'create image', options.path);
    }
    // tmpfs and some network filesystems refuse O_DIRECT: then everything goes through the page cache.
    const directFile = options.direct === false ? undefined : await open(options.path, constants.O_WRONLY | constants.O_DIRECT).catch(() => undefined);
    return new Qcow2Writer({ ...options, clusterSize }, file, directFile);
  }

  /**
   * Appends guest bytes [guestOffset, guestOffset + data.length). guestOffset must be cluster aligned and not
   * below anything written before; the length must be whole clusters unless the range ends at the disk end.
   * Clusters are placed when the call is made, so several writes may be in flight as long as the calls come
   * in guest order.
   */
  async writeData(guestOffset: number, data: Buffer): Promise<void> {
    await this.writeRuns([{ guestOffset, data }]);
  }

  /**
   * Marks whole clusters as reading zeros (L2 flag), hiding any backing data; nothing is written to the file.
   * Same ordering rules as writeData.
   */
  async writeZeroes(guestOffset: number, length: number): Promise<void> {
    await this.writeRuns([{ guestOffset, zeroes: length }]);
  }

  /**
   * Several guest runs at once (ascending, same rules as writeData): the data runs go to consecutive host
   * clusters with a single pwritev, zero runs only set L2 flags. An incremental's scattered small regions, with
   * zeroed ones in between, therefore cost one system call per batch instead of one per region.
   */
  async writeRuns(runs: ReadonlyArray<GuestRun>): Promise<void> {
    let cursor = this.guestCursor;
    let clusters = 0;
    for (const run of runs) {
      const length = runLength(run);
      this.checkRange(run.guestOffset, length, 'data' in run ? 'writeData' : 'writeZeroes', cursor);
      cursor = run.guestOffset + length;
      if ('data' in run) clusters += Math.ceil(length / this.clusterSize);
    }
    // Map first (synchronously), so L2 tables flushed in between land after these runs, not inside them.
    const hostStart = this.nextFree;
    this.nextFree += clusters * this.clusterSize;
    const pendingL2Writes: Array<Promise<void>> = [];
    const buffers: Buffer[] = [];
    let host = hostStart;
    for (const run of runs) {
      const length = runLength(run);
      for (let at = 0; at < length; at += this.clusterSize) {
        const flushed = 'data' in run ? this.setL2(run.guestOffset + at, host + at, false) : this.setL2(run.guestOffset + at, 0, true);
        if (flushed) pendingL2Writes.push(flushed);
      }
      this.guestCursor = run.guestOffset + length;
      const runClusters = Math.ceil(length / this.clusterSize);
      if (!('data' in run)) {
        this.zeroClusters += runClusters;
        continue;
      }
      // Runs back to back in memory (regions packed into one read buffer) become one iovec.
      const last = buffers.at(-1);
      if (last && last.buffer === run.data.buffer && last.byteOffset + last.length === run.data.byteOffset) {
        buffers[buffers.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + run.data.length);
      } else {
        buffers.push(run.data);
      }
      host += runClusters * this.clusterSize;
      this.dataClusters += runClusters;
      this.bytesSinceSync += length;
    }
    await Promise.all([...(buffers.length > 0 ? [this.writeDataClusters(buffers, hostStart)] : []), ...pendingL2Writes]);
    if (this.syncEvery > 0 && this.bytesSinceSync >= this.syncEvery && !this.backgroundSync) {
      this.bytesSinceSync = 0;
      this.backgroundSync = this.file.datasync().finally(() => (this.backgroundSync = undefined));
    }
  }

  /** Writes the last L2 table, the L1 and refcount tables and the header, then fsyncs and closes. */
  async finalize(): Promise<Qcow2WriteSummary> {
    this.requireOpen('finalize');
    try {
      await this.flushL2();
      await this.backgroundSync;
      await this.writeAt(this.l1, this.l1Offset);
      await this.writeRefcounts();
      await this.file.datasync();
      // The header goes last: only a complete image ever carries the magic.
      await this.writeAt(this.header(), 0);
      await this.file.sync();
      await this.file.close();
      await this.directFile?.close();
      this.state = 'finalized';
      return { fileBytes: this.nextFree, dataClusters: this.dataClusters, zeroClusters: this.zeroClusters, l2Tables: this.l2Tables };
    } catch (err) {
      await this.abandon();
      throw err instanceof AppError ? err : ioError(err, 'finalize image', this.path);
    }
  }

  /** Closes and deletes the partial file. Safe to call at any time, more than once. */
  async abandon(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'abandoned';
    await this.backgroundSync?.catch(() => undefined);
    await this.file.close().catch(() => undefined);
    await this.directFile?.close().catch(() => undefined);
    await rm(this.path, { force: true });
  }

  private checkRange(guestOffset: number, length: number, what: string, cursor = this.guestCursor): void {
    this.requireOpen(what);
    const end = guestOffset + length;
    if (guestOffset % this.clusterSize !== 0 || length <= 0 || end > this.sizeBytes || (end % this.clusterSize !== 0 && end !== this.sizeBytes)) {
      throw new AppError(ErrorCode.Internal, `${what} [${guestOffset}, +${length}) is not a whole-cluster range of the ${this.sizeBytes}-byte image`, {
        hint: `align ranges to the ${this.clusterSize}-byte cluster size (only the disk's last cluster may be short)`,
      });
    }
    if (guestOffset < cursor) {
      throw new AppError(ErrorCode.Internal, `${what} at ${guestOffset} goes backwards (already written up to ${cursor})`, {
        hint: 'write clusters in ascending guest order, each cluster once',
      });
    }
  }

  private requireOpen(what: string): void {
    if (this.state !== 'open') throw new AppError(ErrorCode.Internal, `${what} on ${this.state} image ${this.path}`);
  }

  /** Sets one L2 entry; when the entry belongs to a later L2 table, returns the write of the finished one. */
  private setL2(guestOffset: number, hostOffset: number, zero: boolean): Promise<void> | undefined {
    const cluster = Math.floor(guestOffset / this.clusterSize);
    const index = Math.floor(cluster / this.l2Entries);
    let flushed: Promise<void> | undefined;
    if (index !== this.l2Index) {
      flushed = this.flushL2();
      this.l2Index = index;
    }
    const at = (cluster % this.l2Entries) * 8;
    if (zero) writeEntry(this.l2Table, at, 0, 0, L2_ZERO_FLAG);
    else writeEntry(this.l2Table, at, hostOffset, OFLAG_COPIED_HIGH, 0);
    this.l2Dirty = true;
    return flushed;
  }

  private flushL2(): Promise<void> {
    if (!this.l2Dirty) return Promise.resolve();
    const table = this.l2Table;
    const host = this.nextFree;
    this.nextFree += this.clusterSize;
    writeEntry(this.l1, this.l2Index * 8, host, OFLAG_COPIED_HIGH, 0);
    this.l2Table = Buffer.alloc(this.clusterSize);
    this.l2Dirty = false;
    this.l2Tables++;
    return this.writeAt(table, host);
  }

  /** Refcount blocks then the refcount table, sized so that they also count themselves. */
  private async writeRefcounts(): Promise<void> {
    const perBlock = this.clusterSize / REFCOUNT_BYTES;
    const base = this.nextFree / this.clusterSize;
    let blocks = 0;
    let tableClusters = 0;
    for (;;) {
      const total = base + blocks + tableClusters;
      const needBlocks = Math.ceil(total / perBlock);
      const needTable = Math.ceil((needBlocks * 8) / this.clusterSize);
      if (needBlocks === blocks && needTable === tableClusters) break;
      blocks = needBlocks;
      tableClusters = needTable;
    }
    const total = base + blocks + tableClusters;
    const blocksOffset = this.nextFree;
    const tableOffset = blocksOffset + blocks * this.clusterSize;
    const fullBlock = Buffer.alloc(this.clusterSize);
    for (let i = 0; i < perBlock; i++) fullBlock.writeUInt16BE(1, i * REFCOUNT_BYTES);
    const table = Buffer.alloc(tableClusters * this.clusterSize);
    const buffers: Buffer[] = [];
    for (let b = 0; b < blocks; b++) {
      const used = Math.min(perBlock, total - b * perBlock);
      if (used === perBlock) {
        buffers.push(fullBlock);
      } else {
        const partial = Buffer.alloc(this.clusterSize);
        fullBlock.copy(partial, 0, 0, used * REFCOUNT_BYTES);
        buffers.push(partial);
      }
      writeEntry(table, b * 8, blocksOffset + b * this.clusterSize, 0, 0);
    }
    buffers.push(table);
    this.nextFree = tableOffset + table.length;
    this.refcountTable = { offset: tableOffset, clusters: tableClusters };
    await this.writevAt(buffers, blocksOffset);
  }

  private header(): Buffer {
    const header = Buffer.alloc(this.clusterSize);
    header.writeUInt32BE(QCOW2_MAGIC, 0);
    header.writeUInt32BE(QCOW2_VERSION, 4);
    header.writeUInt32BE(this.clusterBits, 20);
    // qemu counts whole 512-byte sectors and would drop a ragged tail, so the size is rounded up like qemu-img's.
    header.writeBigUInt64BE(BigInt(Math.ceil(this.sizeBytes / 512) * 512), 24);
    header.writeUInt32BE(0, 32); // no encryption
    header.writeUInt32BE(this.l1.length / 8, 36);
    header.writeBigUInt64BE(BigInt(this.l1Offset), 40);
    header.writeBigUInt64BE(BigInt(this.refcountTable.offset), 48);
    header.writeUInt32BE(this.refcountTable.clusters, 56);
    // nb_snapshots, snapshots_offset and all feature bits stay 0.
    header.writeUInt32BE(REFCOUNT_ORDER, 96);
    header.writeUInt32BE(HEADER_LENGTH, 100);
    let at = HEADER_LENGTH;
    if (this.backing) {
      const format = Buffer.from(this.backing.format);
      header.writeUInt32BE(HeaderExtension.BackingFormat, at);
      header.writeUInt32BE(format.length, at + 4);
      format.copy(header, at + 8);
      at += 8 + Math.ceil(format.length / 8) * 8;
    }
    header.writeUInt32BE(HeaderExtension.End, at);
    header.writeUInt32BE(0, at + 4);
    at += 8;
    if (this.backing) {
      const name = Buffer.from(this.backing.relativePath);
      header.writeBigUInt64BE(BigInt(at), 8);
      header.writeUInt32BE(name.length, 16);
      name.copy(header, at);
    }
    return header;
  }

  private roundUp(bytes: number): number {
    return Math.ceil(bytes / this.clusterSize) * this.clusterSize;
  }

  /** Host-contiguous data clusters: only the last buffer may end in a short cluster (the disk's tail). */
  private async writeDataClusters(buffers: Buffer[], position: number): Promise<void> {
    const direct = this.directFile;
    if (direct && position % DIRECT_ALIGN === 0 && buffers.every((b) => b.length % DIRECT_ALIGN === 0)) {
      try {
        await writeAll(direct, buffers, position);
        return;
      } catch (err) {
        // EINVAL: a buffer's address is not aligned for O_DIRECT; stop trying and use the page cache.
        if ((err as { code?: string }).code !== 'EINVAL') throw ioError(err, 'write image', this.path);
        this.directFile = undefined;
        await direct.close().catch(() => undefined);
      }
    }
    await this.writevAt(buffers, position);
  }

  private writeAt(buffer: Buffer, position: number): Promise<void> {
    return this.writevAt([buffer], position);
  }

  private async writevAt(buffers: Buffer[], position: number): Promise<void> {
    try {
      await writeAll(this.file, buffers, position);
    } catch (err) {
      throw ioError(err, 'write image', this.path);
    }
  }
}

function runLength(run: GuestRun): number {
  return 'data' in run ? run.data.length : run.zeroes;
}

/** pwritev until every byte is written (the kernel may write less than asked, e.g. near a quota). */
export async function writeAll(handle: FileHandle, buffers: Buffer[], position: number): Promise<void> {
  let remaining = buffers;
  let at = position;
  while (remaining.length > 0) {
    const { bytesWritten } = await handle.writev(remaining, at);
    at += bytesWritten;
    let skip = bytesWritten;
    const rest: Buffer[] = [];
    for (const b of remaining) {
      if (skip >= b.length) skip -= b.length;
      else {
        rest.push(skip > 0 ? b.subarray(skip) : b);
        skip = 0;
      }
    }
    remaining = rest;
  }
}
