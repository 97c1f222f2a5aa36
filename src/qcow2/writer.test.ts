import { execFile } from 'node:child_process';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Qcow2Writer, type GuestRun } from './writer.ts';

const run = promisify(execFile);

async function qemuImg(...args: string[]): Promise<string> {
  const { stdout } = await run('qemu-img', args);
  return stdout;
}

/** Writes the same pattern into the qcow2 writer and a raw reference file, then compares them with qemu-img. */
async function roundTrip(dir: string, name: string, sizeBytes: number, clusterSize: number, runs: Array<[offset: number, length: number]>): Promise<Qcow2Writer> {
  const writer = await Qcow2Writer.create({ path: path.join(dir, `${name}.qcow2`), sizeBytes, clusterSize, syncEveryBytes: 1024 * 1024 });
  const raw = await open(path.join(dir, `${name}.raw`), 'w');
  await raw.truncate(sizeBytes);
  let seed = 1;
  for (const [offset, length] of runs) {
    const data = Buffer.alloc(length);
    for (let i = 0; i < length; i += 512) data.writeUInt32LE((seed = (seed * 1103515245 + 12345) >>> 0), i);
    await writer.writeData(offset, data);
    await raw.write(data, 0, length, offset);
  }
  await raw.close();
  await writer.finalize();
  return writer;
}

describe('Qcow2Writer', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'qcow2-writer-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('small clusters: many L2 tables and refcount blocks, check clean and identical', async () => {
    const cs = 4096; // one L2 table covers 2 MiB, one refcount block 2048 clusters
    const size = 24 * 1024 * 1024 + 512;
    const runs: Array<[number, number]> = [];
    for (let offset = 0; offset + 3 * cs <= size; offset += 5 * cs) runs.push([offset, 3 * cs]);
    runs.push([size - 512, 512]); // the short last cluster
    await roundTrip(dir, 'small', size, cs, runs);
    const check = JSON.parse(await qemuImg('check', '--output=json', path.join(dir, 'small.qcow2'))) as Record<string, number>;
    expect(check['check-errors']).toBe(0);
    expect(check.leaks ?? 0).toBe(0);
    expect(check.corruptions ?? 0).toBe(0);
    expect(await qemuImg('compare', '-f', 'raw', '-F', 'qcow2', path.join(dir, 'small.raw'), path.join(dir, 'small.qcow2'))).toContain('identical');
  });

  it('2 MiB clusters and a size that is not a multiple of the cluster size', async () => {
    const cs = 2 * 1024 * 1024;
    const size = 9 * cs + 3 * 4096;
    await roundTrip(dir, 'big', size, cs, [
      [0, cs],
      [4 * cs, 2 * cs],
      [9 * cs, 3 * 4096],
    ]);
    const info = JSON.parse(await qemuImg('info', '--output=json', path.join(dir, 'big.qcow2'))) as Record<string, unknown>;
    expect(info).toMatchObject({ 'virtual-size': size, 'cluster-size': cs, format: 'qcow2' });
    expect(await qemuImg('compare', '-f', 'raw', '-F', 'qcow2', path.join(dir, 'big.raw'), path.join(dir, 'big.qcow2'))).toContain('identical');
  });

  it('refuses misaligned or backward writes, and abandon() removes the file', async () => {
    const target = path.join(dir, 'bad.qcow2');
    const writer = await Qcow2Writer.create({ path: target, sizeBytes: 1024 * 1024 });
    await expect(writer.writeData(100, Buffer.alloc(65536))).rejects.toThrow(/whole-cluster/);
    await writer.writeData(131072, Buffer.alloc(65536));
    await expect(writer.writeData(0, Buffer.alloc(65536))).rejects.toThrow(/backwards/);
    await writer.abandon();
    await expect(stat(target)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('an unfinished image carries no qcow2 magic', async () => {
    const target = path.join(dir, 'partial.qcow2');
    const writer = await Qcow2Writer.create({ path: target, sizeBytes: 1024 * 1024 });
    await writer.writeData(0, Buffer.alloc(65536, 1));
    await expect(run('qemu-img', ['info', '-f', 'qcow2', target])).rejects.toThrow(/qcow2/i);
    await writer.abandon();
  });

  it('writeRuns: data and zero runs in one call, across L2 tables, over a backing file: check clean and identical', async () => {
    const cs = 4096; // one L2 table covers 2 MiB: the runs below cross two table boundaries
    const size = 6 * 1024 * 1024 + 1536; // short last cluster
    const base = await roundTrip(dir, 'mixed-base', size, cs, [[0, size]]);
    expect(base.sizeBytes).toBe(size);
    const expected = await open(path.join(dir, 'mixed-base.raw'), 'r+');
    const overlay = await Qcow2Writer.create({ path: path.join(dir, 'mixed.qcow2'), sizeBytes: size, clusterSize: cs, backing: { relativePath: 'mixed-base.qcow2' } });
    // One read buffer holding three regions back to back, and a second, separate buffer.
    const packed = Buffer.alloc(3 * cs, 0xa1);
    packed.fill(0xa2, cs);
    packed.fill(0xa3, 2 * cs);
    const tail = Buffer.alloc(1536, 0xb4);
    const runs: GuestRun[] = [
      { guestOffset: cs, data: packed.subarray(0, cs) },
      { guestOffset: 3 * cs, zeroes: 2 * cs },
      { guestOffset: 2 * 1024 * 1024 - cs, data: packed.subarray(cs, 3 * cs) }, // straddles the first L2 boundary
      { guestOffset: 2 * 1024 * 1024 + 4 * cs, zeroes: 2 * 1024 * 1024 }, // covers the second boundary
      { guestOffset: size - 1536, data: tail },
    ];
    await overlay.writeRuns(runs);
    const summary = await overlay.finalize();
    expect(summary).toMatchObject({ dataClusters: 4, zeroClusters: 2 + 512 });
    for (const run of runs) {
      const bytes = 'data' in run ? run.data : Buffer.alloc(run.zeroes);
      await expected.write(bytes, 0, bytes.length, run.guestOffset);
    }
    await expected.close();
    const check = JSON.parse(await qemuImg('check', '--output=json', path.join(dir, 'mixed.qcow2'))) as Record<string, number>;
    expect(check['check-errors']).toBe(0);
    expect(check.leaks ?? 0).toBe(0);
    expect(await qemuImg('compare', '-f', 'raw', '-F', 'qcow2', path.join(dir, 'mixed-base.raw'), path.join(dir, 'mixed.qcow2'))).toContain('identical');
    const map = JSON.parse(await qemuImg('map', '--output=json', path.join(dir, 'mixed.qcow2'))) as Array<{ start: number; length: number; depth: number; zero: boolean; data: boolean }>;
    const top = map.filter((e) => e.depth === 0);
    expect(top.filter((e) => e.data).reduce((n, e) => n + e.length, 0)).toBe(3 * cs + 1536);
    expect(top.filter((e) => e.zero && !e.data).reduce((n, e) => n + e.length, 0)).toBe(2 * cs + 2 * 1024 * 1024);
  });

  it('writeRuns refuses a zero run that goes backwards and places nothing of the refused call', async () => {
    const writer = await Qcow2Writer.create({ path: path.join(dir, 'mixed-bad.qcow2'), sizeBytes: 1024 * 1024 });
    await expect(
      writer.writeRuns([
        { guestOffset: 131072, data: Buffer.alloc(65536) },
        { guestOffset: 65536, zeroes: 65536 },
      ]),
    ).rejects.toThrow(/backwards/);
    await writer.writeRuns([{ guestOffset: 65536, zeroes: 65536 }]);
    const summary = await writer.finalize();
    expect(summary).toMatchObject({ dataClusters: 0, zeroClusters: 1 });
  });
});
