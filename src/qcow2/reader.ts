/**
 * Reads ONE layer of a QCOW2 v2/v3 image, without following its backing file: which guest clusters this
 * layer holds as data, as zero clusters, or leaves to the backing chain, and the guest bytes it holds.
 * Enough to audit an overlay or to check a layer's own bytes; to read the guest view of a whole chain,
 * export the top image with `qemu-nbd -f qcow2` and read it with NbdClient.
 */
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

const COMPRESSED_BIT_HIGH = 0x40000000; // bit 62
/** Incompatible features we cannot read: dirty (0) is fine to read; corrupt 1, external data 2, extended L2 4. */
const UNSUPPORTED_INCOMPATIBLE = (1 << 1) | (1 << 2) | (1 << 4);

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

  static async open(path: string): Promise<Qcow2Layer> {
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
      if (version === 3 && Number(head.readBigUInt64BE(72) & BigInt(UNSUPPORTED_INCOMPATIBLE)) !== 0) {
        throw new AppError(ErrorCode.Unsupported, `${path}: uses incompatible qcow2 features`, { hint: 'read it through qemu-nbd instead' });
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
      return new Qcow2Layer(path, file, { sizeBytes, clusterSize, backingFile, backingFormat, l1 });
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /** What this layer holds for each guest range, neighbours with the same state merged. */
  async *extents(): AsyncGenerator<LayerExtent> {
    let held: LayerExtent | undefined;
    const clusters = Math.ceil(this.sizeBytes / this.clusterSize);
    for (let cluster = 0; cluster < clusters; cluster++) {
      const { state } = await this.lookup(cluster);
      const offset = cluster * this.clusterSize;
      const length = Math.min(this.clusterSize, this.sizeBytes - offset);
      if (held && held.state === state) held.length += length;
      else {
        if (held) yield held;
        held = { offset, length, state };
      }
    }
    if (held) yield held;
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
    await this.file.close();
  }

  private async lookup(cluster: number): Promise<{ state: ClusterState; hostOffset: number }> {
    const l1Index = Math.floor(cluster / this.l2Entries);
    const l2Offset = entryOffset(this.l1, l1Index * 8);
    if (l2Offset === 0) return { state: ClusterState.Unallocated, hostOffset: 0 };
    if (this.cachedL2?.index !== l1Index) {
      const table = Buffer.alloc(this.clusterSize);
      const { bytesRead } = await this.file.read(table, 0, table.length, l2Offset);
      if (bytesRead !== table.length) throw corrupt(this.path, `L2 table at ${l2Offset} lies beyond the end of the file`);
      this.cachedL2 = { index: l1Index, table };
    }
    const at = (cluster % this.l2Entries) * 8;
    const table = this.cachedL2.table;
    if (table.readUInt32BE(at) & COMPRESSED_BIT_HIGH) {
      throw new AppError(ErrorCode.Unsupported, `${this.path}: compressed cluster at guest offset ${cluster * this.clusterSize}`, { hint: 'read it through qemu-nbd' });
    }
    const hostOffset = entryOffset(table, at);
    const zero = (table.readUInt32BE(at + 4) & L2_ZERO_FLAG) !== 0;
    if (zero) return { state: ClusterState.Zero, hostOffset: 0 };
    if (hostOffset === 0) return { state: ClusterState.Unallocated, hostOffset: 0 };
    return { state: ClusterState.Data, hostOffset };
  }
}
