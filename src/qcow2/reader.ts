/**
 * Reads ONE layer of a QCOW2 v2/v3 image, without following its backing file: which guest clusters this
 * layer holds as data (and where in the file), as zero clusters, or leaves to the backing chain, and the
 * guest bytes it holds. Qcow2Chain (chain.ts) stacks layers into the guest view of a whole chain.
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { HeaderExtension, L2_ZERO_FLAG, QCOW2_MAGIC, clusterBitsOf, entryOffset } from './format.ts';

export const ClusterState = { Data: 'data', Zero: 'zero', Unallocated: 'unallocated' } as const;
export type ClusterState = (typeof ClusterState)[keyof typeof ClusterState];

export interface LayerExtent {
  offset: number;
  length: number;
  state: ClusterState;
}

/** A LayerExtent with, for data, the file offset of its first byte; data extents are contiguous in the file. */
export interface LayerMapping extends LayerExtent {
  /** 0 unless state is data. */
  hostOffset: number;
}

const COMPRESSED_BIT_HIGH = 0x40000000; // bit 62
/**
 * Incompatible feature bits a plain reader may ignore: dirty (0: only refcounts may be stale) and compression
 * type (3: only matters for compressed clusters, which are refused anyway). Any other bit — corrupt (1),
 * external data file (2), extended L2 entries (4) or one defined later — changes how clusters must be read.
 */
const READABLE_INCOMPATIBLE = (1n << 0n) | (1n << 3n);

const DIRECT_ALIGN = 4096;

/** Reads [position, position+length) into target; past the end of the file reads zeros. */
async function readFully(file: FileHandle, position: number, length: number, target: Buffer, targetStart: number): Promise<void> {
  for (let done = 0; done < length; ) {
    const { bytesRead } = await file.read(target, targetStart + done, length - done, position + done);
    if (bytesRead === 0) {
      target.fill(0, targetStart + done, targetStart + length);
      return;
    }
    done += bytesRead;
  }
}

function corrupt(file: string, what: string): AppError {
  return new AppError(ErrorCode.Integrity, `${file}: ${what}`, { hint: 'run qemu-img check on the image; restore from another point if it is damaged' });
}

export class Qcow2Layer {
  readonly path: string;
  readonly sizeBytes: number;
  readonly clusterSize: number;
  readonly backingFile: string | undefined;
  readonly backingFormat: string | undefined;
  private readonly file: FileHandle;
  /** Second handle with O_DIRECT for readHost (see open); undefined when not asked for or not usable. */
  private direct: FileHandle | undefined;
  private directRefused = false;
  private readonly l1: Buffer;
  private readonly l2Entries: number;
  private cachedL2: { index: number; table: Buffer } | undefined;

  private constructor(path: string, file: FileHandle, fields: { sizeBytes: number; clusterSize: number; backingFile?: string; backingFormat?: string; l1: Buffer }) {
    this.path = path;
    this.file = file;
    this.sizeBytes = fields.sizeBytes;
    this.clusterSize = fields.clusterSize;
    this.backingFile = fields.backingFile;
    this.backingFormat = fields.backingFormat;
    this.l1 = fields.l1;
    this.l2Entries = fields.clusterSize / 8;
  }

  /**
   * `directReads`: readHost reads 4 KiB-aligned ranges into 4 KiB-aligned buffers with O_DIRECT, straight from
   * the disk into the caller's buffer: no page-cache copy (a third less CPU for a restore of a 30-deep chain
   * here) and one request per read. Other ranges, and filesystems without O_DIRECT, take the page cache.
   */
  static async open(path: string, options: { directReads?: boolean } = {}): Promise<Qcow2Layer> {
    const file = await open(path, 'r').catch((err: unknown) => {
      throw new AppError(ErrorCode.NotFound, `cannot open ${path}: ${(err as Error).message}`, { hint: 'check the image path', cause: err });
    });
    try {
      const head = Buffer.alloc(4096);
      await file.read(head, 0, head.length, 0);
      if (head.readUInt32BE(0) !== QCOW2_MAGIC) throw corrupt(path, 'not a qcow2 image (bad magic)');
      const version = head.readUInt32BE(4);
      if (version !== 2 && version !== 3) throw new AppError(ErrorCode.Unsupported, `${path}: qcow2 version ${version}`, { hint: 'only qcow2 v2 and v3 are readable' });
      const clusterBits = head.readUInt32BE(20);
      const clusterSize = 2 ** clusterBits;
      if (clusterBitsOf(clusterSize) < 0) throw corrupt(path, `cluster_bits ${clusterBits} out of range`);
      if (head.readUInt32BE(32) !== 0) throw new AppError(ErrorCode.Unsupported, `${path}: encrypted qcow2`, { hint: 'decrypt with qemu-img convert first' });
      const unreadableFeatures = version === 3 ? head.readBigUInt64BE(72) & ~READABLE_INCOMPATIBLE : 0n;
      if (unreadableFeatures !== 0n) {
        throw new AppError(ErrorCode.Unsupported, `${path}: uses incompatible qcow2 features 0x${unreadableFeatures.toString(16)}`, { hint: 'read it through qemu-nbd or qemu-img convert instead' });
      }
      const sizeBytes = Number(head.readBigUInt64BE(24));
      const l1Size = head.readUInt32BE(36);
      const l1Offset = Number(head.readBigUInt64BE(40));
      if (l1Size < Math.ceil(sizeBytes / (clusterSize * (clusterSize / 8)))) throw corrupt(path, `L1 table (${l1Size} entries) too small for ${sizeBytes} bytes`);
      const backingOffset = Number(head.readBigUInt64BE(8));
      const backingLength = head.readUInt32BE(16);
      let backingFile: string | undefined;
      if (backingOffset > 0) {
        const name = Buffer.alloc(backingLength);
        await file.read(name, 0, backingLength, backingOffset);
        backingFile = name.toString();
      }
      let backingFormat: string | undefined;
      if (version === 3) {
        const headerLength = head.readUInt32BE(100);
        for (let at = headerLength; at + 8 <= head.length; ) {
          const type = head.readUInt32BE(at);
          const length = head.readUInt32BE(at + 4);
          if (type === HeaderExtension.End) break;
          if (type === HeaderExtension.BackingFormat) backingFormat = head.subarray(at + 8, at + 8 + length).toString();
          at += 8 + Math.ceil(length / 8) * 8;
        }
      }
      const l1 = Buffer.alloc(l1Size * 8);
      await file.read(l1, 0, l1.length, l1Offset);
      const layer = new Qcow2Layer(path, file, { sizeBytes, clusterSize, backingFile, backingFormat, l1 });
      // tmpfs and some network filesystems refuse O_DIRECT: then every read takes the page cache.
      if (options.directReads) layer.direct = await open(path, constants.O_RDONLY | constants.O_DIRECT).catch(() => undefined);
      return layer;
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /** What this layer holds for each guest range, neighbours with the same state merged. */
  async extents(): Promise<LayerExtent[]> {
    const extents: LayerExtent[] = [];
    for (const { offset, length, state } of await this.mappings()) {
      const held = extents.at(-1);
      if (held && held.state === state) held.length += length;
      else extents.push({ offset, length, state });
    }
    return extents;
  }

  /**
   * Where each guest range of this layer lives, in guest order and covering the whole image: one read per L2
   * table, neighbours merged while state matches and (for data) the file offsets are contiguous too.
   * Compressed clusters are Unsupported: their bytes are not a plain file range. The entries are decoded in
   * one loop per table that allocates only at a change of state (a 30-deep chain of 4 GiB has 2 M entries).
   */
  async mappings(): Promise<LayerMapping[]> {
    const tableSpan = this.l2Entries * this.clusterSize;
    const mappings: LayerMapping[] = [];
    let held: LayerMapping | undefined;
    const add = (offset: number, length: number, state: ClusterState, hostOffset: number): void => {
      if (held && held.state === state && (state !== ClusterState.Data || held.hostOffset + held.length === hostOffset)) {
        held.length += length;
        return;
      }
      held = { offset, length, state, hostOffset };
      mappings.push(held);
    };
    for (let l1Index = 0; l1Index * tableSpan < this.sizeBytes; l1Index++) {
      const tableStart = l1Index * tableSpan;
      const l2Offset = entryOffset(this.l1, l1Index * 8);
      if (l2Offset === 0) {
        add(tableStart, Math.min(tableSpan, this.sizeBytes - tableStart), ClusterState.Unallocated, 0);
        continue;
      }
      const table = await this.l2Table(l1Index, l2Offset);
      const entries = Math.min(this.l2Entries, Math.ceil((this.sizeBytes - tableStart) / this.clusterSize));
      for (let entry = 0; entry < entries; entry++) {
        const offset = tableStart + entry * this.clusterSize;
        const length = Math.min(this.clusterSize, this.sizeBytes - offset);
        // Fast path for the common entry of an incremental: all 64 bits zero, unallocated.
        if (table.readUInt32BE(entry * 8) === 0 && table.readUInt32BE(entry * 8 + 4) === 0) add(offset, length, ClusterState.Unallocated, 0);
        else {
          const { state, hostOffset } = this.decode(table, entry, offset);
          add(offset, length, state, hostOffset);
        }
      }
    }
    return mappings;
  }

  /**
   * Reads file bytes [hostOffset, hostOffset+length) into target, as mappings() located them. Bytes past the
   * end of the file read as zeros, as qemu reads them.
   */
  async readHost(hostOffset: number, length: number, target: Buffer, targetStart = 0): Promise<void> {
    const direct = this.directRefused ? undefined : this.direct;
    if (direct && hostOffset % DIRECT_ALIGN === 0 && length % DIRECT_ALIGN === 0 && (target.byteOffset + targetStart) % DIRECT_ALIGN === 0) {
      try {
        await readFully(direct, hostOffset, length, target, targetStart);
        return;
      } catch (err) {
        // EINVAL: the buffer's memory is not aligned after all (byteOffset is relative) or the device wants more.
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        this.directRefused = true;
      }
    }
    await readFully(this.file, hostOffset, length, target, targetStart);
  }

  /**
   * Reads guest bytes [offset, offset+length) held by this layer into target. Zero clusters read as zeros;
   * a range touching an unallocated cluster is an error, since its bytes live in the backing chain.
   */
  async read(offset: number, length: number, target: Buffer, targetStart = 0): Promise<void> {
    if (offset < 0 || length < 0 || offset + length > this.sizeBytes || targetStart + length > target.length) {
      throw new AppError(ErrorCode.InvalidInput, `read [${offset}, +${length}) is outside ${this.path} (${this.sizeBytes} bytes) or the target`, { hint: 'read within the image size' });
    }
    for (let at = offset; at < offset + length; ) {
      const cluster = Math.floor(at / this.clusterSize);
      const within = at - cluster * this.clusterSize;
      const take = Math.min(this.clusterSize - within, offset + length - at);
      const { state, hostOffset } = await this.lookup(cluster);
      const into = targetStart + at - offset;
      if (state === ClusterState.Unallocated) {
        throw new AppError(ErrorCode.InvalidInput, `${this.path}: guest offset ${at} is not held by this layer`, { hint: 'read the chain through qemu-nbd' });
      }
      if (state === ClusterState.Zero) target.fill(0, into, into + take);
      else await this.file.read(target, into, take, hostOffset + within);
      at += take;
    }
  }

  async close(): Promise<void> {
    await this.direct?.close();
    await this.file.close();
  }

  private async lookup(cluster: number): Promise<{ state: ClusterState; hostOffset: number }> {
    const l1Index = Math.floor(cluster / this.l2Entries);
    const l2Offset = entryOffset(this.l1, l1Index * 8);
    if (l2Offset === 0) return { state: ClusterState.Unallocated, hostOffset: 0 };
    const table = await this.l2Table(l1Index, l2Offset);
    return this.decode(table, cluster % this.l2Entries, cluster * this.clusterSize);
  }

  private async l2Table(l1Index: number, l2Offset: number): Promise<Buffer> {
    if (this.cachedL2?.index !== l1Index) {
      const table = Buffer.alloc(this.clusterSize);
      const { bytesRead } = await this.file.read(table, 0, table.length, l2Offset);
      if (bytesRead !== table.length) throw corrupt(this.path, `L2 table at ${l2Offset} lies beyond the end of the file`);
      this.cachedL2 = { index: l1Index, table };
    }
    return this.cachedL2.table;
  }

  private decode(table: Buffer, entry: number, guestOffset: number): { state: ClusterState; hostOffset: number } {
    const at = entry * 8;
    if (table.readUInt32BE(at) & COMPRESSED_BIT_HIGH) {
      throw new AppError(ErrorCode.Unsupported, `${this.path}: compressed cluster at guest offset ${guestOffset}`, { hint: 'read it through qemu-nbd or qemu-img convert' });
    }
    const hostOffset = entryOffset(table, at);
    const zero = (table.readUInt32BE(at + 4) & L2_ZERO_FLAG) !== 0;
    if (zero) return { state: ClusterState.Zero, hostOffset: 0 };
    if (hostOffset === 0) return { state: ClusterState.Unallocated, hostOffset: 0 };
    if (hostOffset % this.clusterSize !== 0) throw corrupt(this.path, `data cluster for guest offset ${guestOffset} at unaligned file offset ${hostOffset}`);
    return { state: ClusterState.Data, hostOffset };
  }
}
