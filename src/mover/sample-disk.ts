/**
 * Deterministic raw disk images for the data-path tests and benchmark: runs of random bytes, zero holes and
 * repeated text patterns, plus a change generator that returns the changed regions as the planner would.
 * The random bytes are an AES-128-CTR keystream keyed by the seed: reproducible and fast (GiB/s).
 */
import { createCipheriv, createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { RegionType, type Region } from './types.ts';

export interface SampleDiskOptions {
  sizeBytes: number;
  seed: string;
  /** Runs are multiples of this (default 1 MiB); pick a non-power-of-two to get unaligned runs. */
  unitBytes?: number;
  /** Longest run, in units. */
  maxRunUnits?: number;
}

export interface SampleDiskLayout {
  sizeBytes: number;
  /** REGULAR for data and pattern runs, ZEROED for holes; sorted, covering the whole disk. */
  runs: Region[];
  dataBytes: number;
}

/** Small seeded PRNG (mulberry32) for layout decisions. */
function prng(seed: string): () => number {
  let state = createHash('sha256').update(seed).digest().readUInt32LE(0);
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function keystream(seed: string) {
  const key = createHash('sha256').update(`key:${seed}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  return (buffer: Buffer, length: number): Buffer => {
    buffer.fill(0, 0, length);
    return cipher.update(buffer.subarray(0, length));
  };
}

async function writeAll(file: FileHandle, buffer: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buffer.length) {
    const { bytesWritten } = await file.write(buffer, done, buffer.length - done, position + done);
    done += bytesWritten;
  }
}

const WRITE_CHUNK = 8 * 1024 * 1024;

/** Writes a sparse raw image: about 50 % random data, 40 % holes, 10 % repeated 4 KiB text patterns. */
export async function createSampleDisk(filePath: string, options: SampleDiskOptions): Promise<SampleDiskLayout> {
  const unit = options.unitBytes ?? 1024 * 1024;
  const maxUnits = options.maxRunUnits ?? 16;
  const random = prng(options.seed);
  const fill = keystream(options.seed);
  const scratch = Buffer.allocUnsafe(WRITE_CHUNK);
  const pattern = Buffer.alloc(4096);
  pattern.write(`sendense sample pattern ${options.seed} `.repeat(200));
  const runs: Region[] = [];
  let dataBytes = 0;
  const file = await open(filePath, 'w');
  try {
    await file.truncate(options.sizeBytes);
    for (let offset = 0; offset < options.sizeBytes; ) {
      const length = Math.min(unit * (1 + Math.floor(random() * maxUnits)), options.sizeBytes - offset);
      const roll = random();
      if (roll < 0.4) {
        runs.push({ offset, length, type: RegionType.Zeroed });
      } else {
        for (let done = 0; done < length; done += WRITE_CHUNK) {
          const part = Math.min(WRITE_CHUNK, length - done);
          if (roll < 0.9) {
            await writeAll(file, fill(scratch, part), offset + done);
          } else {
            for (let at = 0; at < part; at += pattern.length) pattern.copy(scratch, at, 0, Math.min(pattern.length, part - at));
            await writeAll(file, scratch.subarray(0, part), offset + done);
          }
        }
        runs.push({ offset, length, type: RegionType.Regular });
        dataBytes += length;
      }
      offset += length;
    }
  } finally {
    await file.close();
  }
  return { sizeBytes: options.sizeBytes, runs: mergeRegions(runs), dataBytes };
}

export interface ChangeOptions {
  seed: string;
  /** Fraction of the disk to change, e.g. 0.05. */
  fraction: number;
  blockBytes?: number;
  /** Offsets are multiples of this (default blockBytes); smaller values give partial-cluster changes. */
  alignBytes?: number;
  /** Share of changed blocks that become zeros (reported as ZEROED). */
  zeroShare?: number;
}

/** Overwrites random blocks in place; returns the changed regions, sorted and merged, as a CRT would. */
export async function changeSampleDisk(filePath: string, sizeBytes: number, options: ChangeOptions): Promise<Region[]> {
  const block = options.blockBytes ?? 64 * 1024;
  const align = options.alignBytes ?? block;
  const random = prng(`change:${options.seed}`);
  const fill = keystream(`change:${options.seed}`);
  const scratch = Buffer.allocUnsafe(block);
  const zeros = Buffer.alloc(block);
  const slots = Math.floor((sizeBytes - block) / align) + 1;
  const count = Math.max(1, Math.round((sizeBytes * options.fraction) / block));
  const chosen = new Map<number, RegionType>();
  while (chosen.size < Math.min(count, slots)) {
    chosen.set(Math.floor(random() * slots) * align, random() < (options.zeroShare ?? 0) ? RegionType.Zeroed : RegionType.Regular);
  }
  const offsets = [...chosen.keys()].sort((a, b) => a - b);
  const written: Region[] = [];
  const file = await open(filePath, 'r+');
  try {
    for (const offset of offsets) {
      const type = chosen.get(offset) ?? RegionType.Regular;
      await writeAll(file, type === RegionType.Zeroed ? zeros : fill(scratch, block), offset);
      written.push({ offset, length: block, type });
    }
  } finally {
    await file.close();
  }
  return flattenRegions(written);
}

/** Merges touching regions of the same type (input sorted by offset, non-overlapping). */
export function mergeRegions(regions: Region[]): Region[] {
  const out: Region[] = [];
  for (const region of regions) {
    const last = out.at(-1);
    if (last && last.type === region.type && last.offset + last.length === region.offset) last.length += region.length;
    else out.push({ ...region });
  }
  return out;
}

/** Sorted regions that may overlap (later writes win) → sorted, non-overlapping, merged regions. */
function flattenRegions(writes: Region[]): Region[] {
  const out: Region[] = [];
  for (const write of writes) {
    const last = out.at(-1);
    if (last && last.offset + last.length > write.offset) last.length = write.offset - last.offset;
    if (last && last.length === 0) out.pop();
    out.push({ ...write });
  }
  return mergeRegions(out);
}
