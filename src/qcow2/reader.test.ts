import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterState, Qcow2Layer, type LayerExtent, type LayerMapping } from './reader.ts';
import { Qcow2Writer } from './writer.ts';

const run = promisify(execFile);
const KiB = 1024;

describe('Qcow2Layer reads one layer of images written by qemu and by our writer', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'qcow2-reader-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('matches qemu-img map and qemu-io patterns on a qemu-made overlay', async () => {
    const base = path.join(dir, 'base.qcow2');
    const top = path.join(dir, 'top.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', base]);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top]);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 128k 192k', '-c', 'write -z 512k 128k', '-c', 'write -P 0x33 5M 64k', top]);

    const layer = await Qcow2Layer.open(top);
    try {
      expect(layer).toMatchObject({ sizeBytes: 8 * 1024 * KiB, clusterSize: 64 * KiB, backingFile: 'base.qcow2', backingFormat: 'qcow2' });
      const extents: LayerExtent[] = await layer.extents();
      const { stdout } = await run('qemu-img', ['map', '--output=json', top]);
      const expected = (JSON.parse(stdout) as Array<{ start: number; length: number; depth: number; zero: boolean; data: boolean; offset?: number }>).filter((e) => e.depth === 0);
      expect(extents.filter((e) => e.state !== ClusterState.Unallocated)).toEqual(
        expected.map((e) => ({ offset: e.start, length: e.length, state: e.data ? ClusterState.Data : ClusterState.Zero })),
      );
      // mappings() also says where the data lives in the file, as qemu-img map does.
      const mappings: LayerMapping[] = await layer.mappings();
      expect(mappings.filter((m) => m.state !== ClusterState.Unallocated)).toEqual(
        expected.map((e) => ({ offset: e.start, length: e.length, state: e.data ? ClusterState.Data : ClusterState.Zero, hostOffset: e.data ? e.offset : 0 })),
      );
      const hostBytes = Buffer.alloc(64 * KiB);
      const firstData = mappings.find((m) => m.state === ClusterState.Data)!;
      await layer.readHost(firstData.hostOffset, hostBytes.length, hostBytes);
      expect(hostBytes.every((b) => b === 0x22)).toBe(true);
      const bytes = Buffer.alloc(192 * KiB);
      await layer.read(128 * KiB, bytes.length, bytes);
      expect(bytes.every((b) => b === 0x22)).toBe(true);
      const zeros = Buffer.alloc(128 * KiB, 0xff);
      await layer.read(512 * KiB, zeros.length, zeros);
      expect(zeros.every((b) => b === 0)).toBe(true);
      await expect(layer.read(0, 4096, Buffer.alloc(4096))).rejects.toThrow(/not held by this layer/);
    } finally {
      await layer.close();
    }
  });

  it('reads back what Qcow2Writer wrote, including the short last cluster', async () => {
    const file = path.join(dir, 'ours.qcow2');
    const size = 3 * 64 * KiB + 1536;
    const writer = await Qcow2Writer.create({ path: file, sizeBytes: size, backing: { relativePath: 'base.qcow2' } });
    await writer.writeData(0, Buffer.alloc(64 * KiB, 0x44));
    await writer.writeZeroes(64 * KiB, 64 * KiB);
    await writer.writeData(3 * 64 * KiB, Buffer.alloc(1536, 0x55));
    await writer.finalize();
    const layer = await Qcow2Layer.open(file);
    try {
      const extents: LayerExtent[] = await layer.extents();
      expect(extents).toEqual([
        { offset: 0, length: 64 * KiB, state: ClusterState.Data },
        { offset: 64 * KiB, length: 64 * KiB, state: ClusterState.Zero },
        { offset: 128 * KiB, length: 64 * KiB, state: ClusterState.Unallocated },
        { offset: 192 * KiB, length: 1536, state: ClusterState.Data },
      ]);
      const tail = Buffer.alloc(1536);
      await layer.read(192 * KiB, 1536, tail);
      expect(tail.every((b) => b === 0x55)).toBe(true);
    } finally {
      await layer.close();
    }
  });
});
