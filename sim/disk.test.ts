/** Disk content, guest-write tracking, freezing and changed-region computation on real sparse files. */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyGuestWrites, BlockMap, changedRegions, createDiskFile, freezeDisk, TRACK_BLOCK, unshareLiveDisk, type ChangedRegion } from './disk.ts';

let dir: string;
const size = 16 * 1024 * 1024 - 1536;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sim-disk-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function sha(buffer: Buffer): string {
  return createHash('sha256').update(buffer).digest('hex');
}

function all(query: Omit<Parameters<typeof changedRegions>[0], 'maxRegions'>, maxRegions: number): ChangedRegion[] {
  const out: ChangedRegion[] = [];
  let start = query.startOffset;
  for (;;) {
    const page = changedRegions({ ...query, startOffset: start, maxRegions });
    out.push(...page.regions);
    if (page.nextOffset === undefined) return out;
    start = page.nextOffset;
  }
}

describe('disk content', () => {
  it('is deterministic per key, sparse, and has data, zeroed and hole blocks', async () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    const mapA = await createDiskFile(a, size, 'seed/vm/disk');
    const mapB = await createDiskFile(b, size, 'seed/vm/disk');
    expect(sha(await readFile(a))).toBe(sha(await readFile(b)));
    expect(mapA.entries).toEqual(mapB.entries);
    expect((await stat(a)).size).toBe(size);
    expect((await stat(a)).blocks * 512).toBeLessThan(size);
    const kinds = { hole: 0, zero: 0, data: 0 };
    for (let i = 0; i < mapA.blocks; i++) {
      if (mapA.generation(i) === 0) kinds.hole++;
      else if (mapA.readsAsZero(i)) kinds.zero++;
      else kinds.data++;
    }
    expect(kinds.hole).toBeGreaterThan(0);
    expect(kinds.zero).toBeGreaterThan(0);
    expect(kinds.data / mapA.blocks).toBeGreaterThan(0.4);
    const other = await createDiskFile(join(dir, 'c'), size, 'seed/vm/other-disk');
    expect(other.entries).not.toEqual(mapA.entries);
  });

  it('the map says exactly which blocks read as zero', async () => {
    const path = join(dir, 'zero-check');
    const map = await createDiskFile(path, size, 'zero-check');
    const content = await readFile(path);
    for (let i = 0; i < map.blocks; i++) {
      const block = content.subarray(i * TRACK_BLOCK, Math.min((i + 1) * TRACK_BLOCK, size));
      expect(block.every((x) => x === 0), `block ${i}`).toBe(map.readsAsZero(i));
    }
  });
});

describe('guest writes, freeze and changed regions', () => {
  it('reports exactly the written blocks, and the frozen copy keeps the old content', async () => {
    const live = join(dir, 'live');
    const map = await createDiskFile(live, size, 'writes');
    const frozenPath = join(dir, 'snap1');
    const frozen = await freezeDisk(live, map, frozenPath);
    const before = await readFile(live);
    await unshareLiveDisk(live);
    const written = await applyGuestWrites(live, map, size, 2, 10, 'writes');
    expect(written.length).toBe(Math.round((map.blocks * 10) / 100));
    expect(written.at(-1)?.offset).toBeLessThan(size);
    expect(sha(await readFile(frozenPath))).toBe(sha(before));
    expect((await stat(frozenPath)).mode & 0o777).toBe(0o444);
    expect((await stat(frozenPath)).ino).not.toBe((await stat(live)).ino);

    const after = await readFile(live);
    const regions = all({ map, sizeBytes: size, reference: frozen, startOffset: 0, endOffset: size, alignment: 0 }, 3);
    const covered = new Set<number>();
    for (const r of regions) {
      for (let off = r.offset; off < r.offset + r.length; off += TRACK_BLOCK) covered.add(off);
      if (r.type === 'ZEROED') expect(after.subarray(r.offset, r.offset + r.length).every((x) => x === 0)).toBe(true);
    }
    expect([...covered].sort((x, y) => x - y)).toEqual(written.map((w) => w.offset));
    // Every byte that differs lies in a reported region.
    for (let i = 0; i < size; i += TRACK_BLOCK) {
      const differs = !before.subarray(i, i + TRACK_BLOCK).equals(after.subarray(i, i + TRACK_BLOCK));
      if (differs) expect(covered.has(i), `changed block at ${i} not reported`).toBe(true);
    }
    // Paged answers concatenate to the unpaged one.
    expect(regions).toEqual(changedRegions({ map, sizeBytes: size, reference: frozen, startOffset: 0, endOffset: size, alignment: 0, maxRegions: 1_000_000 }).regions);
  });

  it('aligns to larger block sizes and clips the last region to the file size', async () => {
    const map = BlockMap.forSize(size);
    map.set(1, 3, false);
    map.set(5, 3, true);
    map.set(map.blocks - 1, 3, false);
    const reference = BlockMap.forSize(size);
    const regions = changedRegions({ map, sizeBytes: size, reference, startOffset: 0, endOffset: size, alignment: 262144, maxRegions: 100 });
    expect(regions.regions).toEqual([
      { offset: 0, length: 262144, type: 'REGULAR' },
      { offset: 262144, length: 262144, type: 'ZEROED' },
      { offset: size - (size % 262144 || 262144), length: size % 262144 || 262144, type: 'REGULAR' },
    ]);
    // Without a reference: every allocated block.
    expect(changedRegions({ map, sizeBytes: size, startOffset: 0, endOffset: size, alignment: 65536, maxRegions: 100 }).regions).toHaveLength(3);
    // A grown disk: blocks beyond the reference's end count as changed when allocated.
    const grown = new BlockMap(map.blocks + 2);
    grown.entries.set(map.entries);
    grown.set(map.blocks + 1, 4, false);
    const tail = changedRegions({ map: grown, sizeBytes: size + 2 * TRACK_BLOCK, reference: map, startOffset: 0, endOffset: size + 2 * TRACK_BLOCK, alignment: 0, maxRegions: 100 });
    expect(tail.regions).toEqual([{ offset: (map.blocks + 1) * TRACK_BLOCK, length: size + 2 * TRACK_BLOCK - (map.blocks + 1) * TRACK_BLOCK, type: 'REGULAR' }]);
  });

  it('persists maps byte-exactly', async () => {
    const map = BlockMap.forSize(10 * TRACK_BLOCK);
    map.set(3, 0x1234, true);
    map.set(9, 77, false);
    const path = join(dir, 'map.bin');
    await map.save(path);
    const loaded = await BlockMap.load(path);
    expect(loaded.entries).toEqual(map.entries);
    await writeFile(path, Buffer.alloc(0));
    expect((await BlockMap.load(path)).blocks).toBe(0);
  });
});
