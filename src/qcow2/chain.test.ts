import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ChainRunKind, Qcow2Chain, type ChainRun } from './chain.ts';
import { Qcow2Writer } from './writer.ts';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;

const MapSchema = z.array(z.object({ start: z.number(), length: z.number(), depth: z.number(), zero: z.boolean(), data: z.boolean(), offset: z.number().optional() }));

/** Per 512-byte sector: "zero" or "<layer>@<file offset>", from our runs and from qemu-img map. */
function sectorsOfRuns(runs: ChainRun[]): string[] {
  return runs.flatMap((r) => Array.from({ length: r.length / 512 }, (_, i) => (r.kind === ChainRunKind.Zero ? 'zero' : `${r.layer}@${r.hostOffset + i * 512}`)));
}

async function sectorsOfQemuMap(image: string): Promise<string[]> {
  const { stdout } = await run('qemu-img', ['map', '--output=json', image]);
  return MapSchema.parse(JSON.parse(stdout)).flatMap((e) =>
    Array.from({ length: e.length / 512 }, (_, i) => (e.data && e.offset !== undefined ? `${e.depth}@${e.offset + i * 512}` : 'zero')),
  );
}

describe('Qcow2Chain resolves the guest view of a backing chain once', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'qcow2-chain-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('agrees with qemu-img map on a qemu-made chain with mixed cluster sizes, zeros over data and a shorter base', async () => {
    const base = path.join(dir, 'q-base.qcow2');
    const mid = path.join(dir, 'q-mid.qcow2');
    const top = path.join(dir, 'q-top.qcow2');
    // The base is shorter than its overlays: past its end the chain reads zeros.
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(6 * MiB)]);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 5M', base]);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'q-base.qcow2', '-F', 'qcow2', mid, String(8 * MiB + 1536)]);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -z 1M 256k', '-c', 'write -P 0x22 2052k 12k', '-c', 'write -P 0x23 8M 1536', mid]);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'q-mid.qcow2', '-F', 'qcow2', top]);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 1088k 64k', '-c', 'write -z 2M 64k', '-c', 'write -P 0x34 7M 64k', top]);

    const chain = await Qcow2Chain.open(top);
    try {
      expect(chain.layers.map((l) => path.basename(l.path))).toEqual(['q-top.qcow2', 'q-mid.qcow2', 'q-base.qcow2']);
      expect(chain.sizeBytes).toBe(8 * MiB + 1536);
      const runs = await chain.runs();
      expect(runs.reduce((n, r) => (expect(r.offset).toBe(n), n + r.length), 0)).toBe(chain.sizeBytes);
      expect(sectorsOfRuns(runs)).toEqual(await sectorsOfQemuMap(top));
      // The zero cluster written on top hides the mid layer's data at 2052k.
      expect(runs.find((r) => r.offset <= 2 * MiB + 4 * KiB && r.offset + r.length > 2 * MiB + 4 * KiB)?.kind).toBe(ChainRunKind.Zero);
    } finally {
      await chain.close();
    }
  });

  it('agrees with qemu-img map on a chain written by Qcow2Writer, last cluster short', async () => {
    const size = 5 * 64 * KiB + 512;
    const paths = ['w-0.qcow2', 'w-1.qcow2', 'w-2.qcow2'].map((n) => path.join(dir, n));
    const layers: Array<(w: Qcow2Writer) => Promise<void>> = [
      async (w) => {
        await w.writeData(0, Buffer.alloc(3 * 64 * KiB, 0x41));
        await w.writeData(5 * 64 * KiB, Buffer.alloc(512, 0x42));
      },
      async (w) => {
        await w.writeZeroes(64 * KiB, 64 * KiB);
        await w.writeData(4 * 64 * KiB, Buffer.alloc(64 * KiB, 0x43));
      },
      async (w) => {
        await w.writeData(0, Buffer.alloc(64 * KiB, 0x44));
        await w.writeZeroes(5 * 64 * KiB, 512);
      },
    ];
    for (const [i, fill] of layers.entries()) {
      const writer = await Qcow2Writer.create({ path: paths[i]!, sizeBytes: size, backing: i === 0 ? undefined : { relativePath: path.basename(paths[i - 1]!) } });
      await fill(writer);
      await writer.finalize();
    }
    const chain = await Qcow2Chain.open(paths[2]!);
    try {
      const runs = await chain.runs();
      expect(sectorsOfRuns(runs)).toEqual(await sectorsOfQemuMap(paths[2]!));
      expect(runs.map((r) => [r.offset / (64 * KiB), r.kind, r.kind === ChainRunKind.Data ? r.layer : -1])).toEqual([
        [0, 'data', 0],
        [1, 'zero', -1],
        [2, 'data', 2],
        [3, 'zero', -1],
        [4, 'data', 1],
        [5, 'zero', -1],
      ]);
    } finally {
      await chain.close();
    }
  });

  it('refuses what it cannot read as Unsupported, and a missing backing file as NotFound', async () => {
    const raw = path.join(dir, 'u-base.raw');
    const over = path.join(dir, 'u-over.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'raw', raw, String(MiB)]);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'u-base.raw', '-F', 'raw', over]);
    await expect(Qcow2Chain.open(over)).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/format raw/) });

    const plain = path.join(dir, 'u-plain.qcow2');
    const compressed = path.join(dir, 'u-compressed.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', plain, String(MiB)]);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 0 128k', plain]);
    await run('qemu-img', ['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', plain, compressed]);
    const chain = await Qcow2Chain.open(compressed);
    try {
      await expect(chain.runs()).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/compressed cluster/) });
    } finally {
      await chain.close();
    }

    const external = path.join(dir, 'u-external.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${path.join(dir, 'u-external.data')}`, external, String(MiB)]);
    await expect(Qcow2Chain.open(external)).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/incompatible qcow2 features 0x4/) });

    const orphan = path.join(dir, 'u-orphan.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'u-gone.qcow2', '-F', 'qcow2', orphan, String(MiB)]);
    await expect(Qcow2Chain.open(orphan)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});
