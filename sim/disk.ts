/**
 * Simulated VM disks: sparse raw files with deterministic content, plus an exact per-64 KiB-block record of which
 * guest-write generation last touched each block. Changed regions are computed from these records (never guessed
 * from content), which is what makes the simulator's CRT answers exact. Like a hypervisor acknowledging a guest
 * write, every write here is durable before it returns: the simulated storage shares the backup host's disk, and
 * its writeback must not run (and be measured) inside the next backup.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { chmod, link, mkdir, open, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export const TRACK_BLOCK = 64 * 1024;
const ZERO_FLAG = 0x8000_0000;
const GENERATION_MASK = 0x7fff_ffff;

/** Generation + all-zero flag per 64 KiB block. Generation 0 = never allocated (a hole, reads as zeros). */
export class BlockMap {
  entries: Uint32Array;

  constructor(blocks: number, entries?: Uint32Array) {
    this.entries = entries ?? new Uint32Array(blocks);
  }

  static forSize(sizeBytes: number): BlockMap {
    return new BlockMap(Math.ceil(sizeBytes / TRACK_BLOCK));
  }

  get blocks(): number {
    return this.entries.length;
  }

  generation(block: number): number {
    return (this.entries[block] ?? 0) & GENERATION_MASK;
  }

  /** True when the block reads as zeros: a hole, or allocated and written with zeros. */
  readsAsZero(block: number): boolean {
    const entry = this.entries[block] ?? 0;
    return (entry & GENERATION_MASK) === 0 || (entry & ZERO_FLAG) !== 0;
  }

  set(block: number, generation: number, zero: boolean): void {
    this.entries[block] = (generation & GENERATION_MASK) | (zero ? ZERO_FLAG : 0);
  }

  /** Grows (never shrinks) to cover `sizeBytes`; new blocks are holes. */
  resize(sizeBytes: number): void {
    const blocks = Math.ceil(sizeBytes / TRACK_BLOCK);
    if (blocks <= this.entries.length) return;
    const grown = new Uint32Array(blocks);
    grown.set(this.entries);
    this.entries = grown;
  }

  async save(path: string): Promise<void> {
    const tmp = `${path}.tmp`;
    await writeFile(tmp, Buffer.from(this.entries.buffer, this.entries.byteOffset, this.entries.byteLength));
    await rename(tmp, path);
  }

  static async load(path: string): Promise<BlockMap> {
    const bytes = await readFile(path);
    const entries = new Uint32Array(bytes.byteLength / 4);
    Buffer.from(entries.buffer).set(bytes);
    return new BlockMap(entries.length, entries);
  }
}

/** Small deterministic PRNG (mulberry32) seeded from text: same seed, same disk layout and same writes. */
export class Prng {
  private state: number;

  constructor(seedText: string) {
    this.state = createHash('sha256').update(seedText).digest().readUInt32LE(0);
  }

  next(): number {
    this.state = (this.state + 0x6d2b79f5) | 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(maxExclusive: number): number {
    return Math.floor(this.next() * maxExclusive);
  }

  uuid(): string {
    const hex = Array.from({ length: 32 }, () => this.int(16).toString(16));
    hex[12] = '4';
    hex[16] = (this.int(4) + 8).toString(16);
    const h = hex.join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
}

/** Deterministic pseudo-random bytes (AES-CTR keystream): fast enough for multi-GiB disks. */
function randomBytesFor(keyText: string, startBlock: number, length: number): Buffer {
  const key = createHash('sha256').update(keyText).digest().subarray(0, 16);
  const iv = Buffer.alloc(16);
  iv.writeUInt32BE(startBlock >>> 0, 12);
  const cipher = createCipheriv('aes-128-ctr', key, iv);
  return cipher.update(Buffer.alloc(length));
}

function patternBlock(keyText: string): Buffer {
  const unit = randomBytesFor(`${keyText}/pattern`, 0, 4096);
  const block = Buffer.alloc(TRACK_BLOCK);
  for (let off = 0; off < TRACK_BLOCK; off += unit.length) unit.copy(block, off);
  return block;
}

const MAX_WRITE = 8 * 1024 * 1024;

/** Writes `length` bytes of `fill(offset, chunkLength)` at `offset`, in bounded chunks. */
async function writeRange(
  file: Awaited<ReturnType<typeof open>>,
  offset: number,
  length: number,
  fill: (chunkOffset: number, chunkLength: number) => Buffer,
): Promise<void> {
  for (let done = 0; done < length; done += MAX_WRITE) {
    const chunk = Math.min(MAX_WRITE, length - done);
    await file.write(fill(offset + done, chunk), 0, chunk, offset + done);
  }
}

const RunKind = { Hole: 'hole', Data: 'data', Pattern: 'pattern', Zero: 'zero' } as const;
type RunKind = (typeof RunKind)[keyof typeof RunKind];

function pickRunKind(prng: Prng): RunKind {
  const r = prng.next();
  if (r < 0.55) return RunKind.Data;
  if (r < 0.63) return RunKind.Pattern;
  if (r < 0.7) return RunKind.Zero;
  return RunKind.Hole;
}

/**
 * Creates the disk file with its initial guest content (generation 1) and returns its block map.
 * Layout: runs of 1..48 blocks of random data, a repeated 4 KiB pattern, written zeros, or holes.
 */
export async function createDiskFile(path: string, sizeBytes: number, contentKey: string): Promise<BlockMap> {
  await mkdir(dirname(path), { recursive: true });
  const map = BlockMap.forSize(sizeBytes);
  const prng = new Prng(contentKey);
  const pattern = patternBlock(contentKey);
  const tmp = `${path}.creating`;
  const file = await open(tmp, 'w');
  try {
    await file.truncate(sizeBytes);
    let block = 0;
    while (block < map.blocks) {
      const run = Math.min(1 + prng.int(48), map.blocks - block);
      const kind = pickRunKind(prng);
      const offset = block * TRACK_BLOCK;
      const length = Math.min(run * TRACK_BLOCK, sizeBytes - offset);
      if (kind === RunKind.Data) {
        await writeRange(file, offset, length, (o, n) => randomBytesFor(`${contentKey}/g1`, o / TRACK_BLOCK, n));
      } else if (kind === RunKind.Pattern) {
        await writeRange(file, offset, length, (_o, n) => {
          const out = Buffer.alloc(n);
          for (let p = 0; p < n; p += TRACK_BLOCK) pattern.copy(out, p, 0, Math.min(TRACK_BLOCK, n - p));
          return out;
        });
      } else if (kind === RunKind.Zero) {
        await writeRange(file, offset, length, (_o, n) => Buffer.alloc(n));
      }
      if (kind !== RunKind.Hole) {
        for (let b = block; b < block + run; b++) map.set(b, 1, kind === RunKind.Zero);
      }
      block += run;
    }
    await file.datasync();
  } finally {
    await file.close();
  }
  await rename(tmp, path);
  return map;
}

export interface WrittenBlock {
  offset: number;
  length: number;
  zero: boolean;
}

/**
 * Guest writes: `changedPercent` of the disk's 64 KiB blocks (at least one), picked at random, overwritten with
 * new random data, or (one in five) with zeros. Records `generation` for each; returns the blocks in offset order.
 */
export async function applyGuestWrites(
  path: string,
  map: BlockMap,
  sizeBytes: number,
  generation: number,
  changedPercent: number,
  seedText: string,
): Promise<WrittenBlock[]> {
  const prng = new Prng(`${seedText}/write/${generation}`);
  const count = Math.max(1, Math.min(map.blocks, Math.round((map.blocks * changedPercent) / 100)));
  // Partial Fisher-Yates over block indexes: distinct blocks without materialising a huge set.
  const swapped = new Map<number, number>();
  const chosen: number[] = [];
  for (let i = 0; i < count; i++) {
    const j = i + prng.int(map.blocks - i);
    const pick = swapped.get(j) ?? j;
    swapped.set(j, swapped.get(i) ?? i);
    chosen.push(pick);
  }
  chosen.sort((a, b) => a - b);
  const written: WrittenBlock[] = [];
  const file = await open(path, 'r+');
  try {
    for (const block of chosen) {
      const offset = block * TRACK_BLOCK;
      const length = Math.min(TRACK_BLOCK, sizeBytes - offset);
      const zero = prng.next() < 0.2;
      const data = zero ? Buffer.alloc(length) : randomBytesFor(`${seedText}/g${generation}`, block, length);
      await file.write(data, 0, length, offset);
      map.set(block, generation, zero);
      written.push({ offset, length, zero });
    }
    await file.datasync();
  } finally {
    await file.close();
  }
  return written;
}

/** Flushes a file's data to the disk. */
async function datasyncFile(path: string): Promise<void> {
  const file = await open(path, 'r');
  try {
    await file.datasync();
  } finally {
    await file.close();
  }
}

/**
 * Copy-on-write for the live disk: when a snapshot still shares its inode, the live file is replaced by a sparse
 * (reflink when the filesystem can) copy before the guest writes, so the snapshot keeps its content.
 */
export async function unshareLiveDisk(livePath: string): Promise<void> {
  if ((await stat(livePath)).nlink <= 1) return;
  const copy = `${livePath}.cow`;
  await execFileAsync('cp', ['--reflink=auto', '--sparse=always', livePath, copy]);
  await datasyncFile(copy);
  await chmod(copy, 0o644);
  await rename(copy, livePath);
}

/** Grows the disk file (AHV never shrinks a disk). */
export async function growDiskFile(path: string, map: BlockMap, newSizeBytes: number): Promise<void> {
  const file = await open(path, 'r+');
  try {
    await file.truncate(newSizeBytes);
  } finally {
    await file.close();
  }
  map.resize(newSizeBytes);
}

/**
 * Freezes the disk in O(1): the snapshot is a hard link to the live file's current inode (read-only), plus a copy
 * of its map. The copy happens later and only if the guest writes again: see `unshareLiveDisk`.
 */
export async function freezeDisk(livePath: string, map: BlockMap, snapshotPath: string): Promise<BlockMap> {
  await mkdir(dirname(snapshotPath), { recursive: true });
  await link(livePath, snapshotPath);
  await chmod(snapshotPath, 0o444);
  const frozen = new BlockMap(map.blocks, map.entries.slice());
  await frozen.save(`${snapshotPath}.map`);
  return frozen;
}

export const ChangedRegionType = { Regular: 'REGULAR', Zeroed: 'ZEROED' } as const;
export type ChangedRegionType = (typeof ChangedRegionType)[keyof typeof ChangedRegionType];

export interface ChangedRegion {
  offset: number;
  length: number;
  type: ChangedRegionType;
}

export interface ChangedRegionsQuery {
  map: BlockMap;
  sizeBytes: number;
  /** Absent: every allocated block (a full backup's plan). */
  reference?: BlockMap;
  startOffset: number;
  endOffset: number;
  /** Region alignment in bytes; below 64 KiB the 64 KiB tracking blocks are already aligned to it. */
  alignment: number;
  maxRegions: number;
}

export interface ChangedRegionsPage {
  regions: ChangedRegion[];
  /** Set when maxRegions cut the answer short: where the next query must start. */
  nextOffset?: number;
}

/**
 * Changed regions in [startOffset, endOffset): a unit (alignment-sized, ≥ 64 KiB) is changed when any of its
 * blocks has a different generation than in the reference (or is allocated, without a reference); it is ZEROED only
 * when all of its blocks read as zero in the newer snapshot. Same-type neighbours merge; the end clips to the file.
 */
export function changedRegions(query: ChangedRegionsQuery): ChangedRegionsPage {
  const unit = Math.max(query.alignment, TRACK_BLOCK);
  const blocksPerUnit = unit / TRACK_BLOCK;
  const end = Math.min(query.endOffset, query.sizeBytes);
  const regions: ChangedRegion[] = [];
  for (let unitStart = Math.floor(query.startOffset / unit) * unit; unitStart < end; unitStart += unit) {
    const firstBlock = unitStart / TRACK_BLOCK;
    let changed = false;
    let allZero = true;
    for (let b = firstBlock; b < firstBlock + blocksPerUnit && b < query.map.blocks; b++) {
      const generation = query.map.generation(b);
      const referenceGeneration = query.reference ? (b < query.reference.blocks ? query.reference.generation(b) : 0) : 0;
      if (query.reference ? generation !== referenceGeneration : generation !== 0) changed = true;
      if (!query.map.readsAsZero(b)) allZero = false;
    }
    if (!changed) continue;
    const type = allZero ? ChangedRegionType.Zeroed : ChangedRegionType.Regular;
    const length = Math.min(unit, query.sizeBytes - unitStart);
    const last = regions.at(-1);
    if (last && last.type === type && last.offset + last.length === unitStart) {
      last.length += length;
      continue;
    }
    if (regions.length === query.maxRegions) {
      return { regions, nextOffset: last ? last.offset + last.length : unitStart };
    }
    regions.push({ offset: unitStart, length, type });
  }
  return { regions };
}
