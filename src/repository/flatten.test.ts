import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../lib/log.ts';
import { ChainRunKind, type ChainRun } from '../qcow2/chain.ts';
import { Qcow2Writer } from '../qcow2/writer.ts';
import { FlattenMethod, copyWindows, flattenImage } from './flatten.ts';
import { pointDir, type VmRef } from './layout.ts';
import { restoreDisk } from './restore.ts';
import { MiB, ReferenceDisks, commitTestPoint, qemuIo, tempDir, type DiskWrite } from './test-repo.ts';

const run = promisify(execFile);
const KiB = 1024;
const quiet = createLogger({ level: 'silent' });

async function compare(a: string, b: string): Promise<string> {
  const result = await run('qemu-img', ['compare', a, b]).catch((err: { stdout?: string; stderr?: string }) => ({ stdout: `${err.stdout ?? ''}${err.stderr ?? ''}` }));
  return result.stdout.trim();
}
const IDENTICAL = 'Images are identical.';

describe('flattenImage: a chain resolved once, copied in long runs', () => {
  let work: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => {
    work = await tempDir('flatten-test-');
  });
  afterEach(async () => work.remove());

  /** A chain made by qemu itself (qemu-img create -b, qemu-io writes), and a raw reference that received the same writes. */
  async function qemuChain(size: number, layers: Array<{ clusterSize?: number; writes: DiskWrite[] }>): Promise<{ top: string; reference: string }> {
    const reference = join(work.path, 'qemu-reference.raw');
    await run('qemu-img', ['create', '-q', '-f', 'raw', reference, String(size)]);
    let below: string | undefined;
    for (const [i, layer] of layers.entries()) {
      const image = join(work.path, `qemu-${i}.qcow2`);
      const args = ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${layer.clusterSize ?? 65536}`];
      if (below) args.push('-b', below, '-F', 'qcow2');
      await run('qemu-img', [...args, image, String(size)]);
      await qemuIo(image, 'qcow2', layer.writes);
      await qemuIo(reference, 'raw', layer.writes);
      below = `qemu-${i}.qcow2`;
    }
    return { top: join(work.path, below!), reference };
  }

  it('flattens a qemu-made chain (zeros over data, unaligned writes and size, mixed cluster sizes) bit-exact to raw and qcow2', async () => {
    const size = 24 * MiB + 3 * 512;
    const { top, reference } = await qemuChain(size, [
      { writes: [{ offset: 0, length: 10 * MiB, pattern: 0x11 }, { offset: 16 * MiB, length: 8 * MiB + 1536, pattern: 0x12 }] },
      { clusterSize: 4096, writes: [{ offset: MiB, length: 300 * KiB }, { offset: 3 * MiB + 512, length: 5000, pattern: 0x21 }, { offset: 20 * MiB, length: 4 * MiB + 1536 }] },
      { writes: [{ offset: MiB + 64 * KiB, length: 64 * KiB, pattern: 0x31 }, { offset: 5 * MiB, length: 2 * MiB }, { offset: 24 * MiB, length: 1024, pattern: 0x32 }] },
    ]);
    // Default windows, windows small enough to cut runs and gaps everywhere, one reused buffer, and every read
    // with O_DIRECT or none.
    const variants = [
      ['default', {}],
      ['tiny-windows', { windowBytes: 64 * KiB, holeBytes: 0 }],
      ['no-holes-one-buffer', { windowBytes: MiB, holeBytes: 64 * MiB, windowsInFlight: 1 }],
      ['page-cache-reads', { directReads: false }],
    ] as const;
    for (const [name, options] of variants) {
      const raw = join(work.path, `${name}.raw`);
      const result = await flattenImage(top, raw, 'raw', { ...options, logger: quiet });
      expect(result).toMatchObject({ method: FlattenMethod.ChainReader, copied: { layers: 3, sizeBytes: size } });
      expect((await stat(raw)).size).toBe(size);
      expect(await compare(raw, reference)).toBe(IDENTICAL);
      expect(await compare(raw, top)).toBe(IDENTICAL);
    }
    const qcow2 = join(work.path, 'flat.qcow2');
    expect(await flattenImage(top, qcow2, 'qcow2', { logger: quiet })).toMatchObject({ method: FlattenMethod.ChainReader });
    await run('qemu-img', ['check', qcow2]);
    expect(await compare(qcow2, reference)).toBe(IDENTICAL);
    const { stdout } = await run('qemu-img', ['info', '--output=json', qcow2]);
    expect(JSON.parse(stdout)).toMatchObject({ 'virtual-size': size, format: 'qcow2' });
    expect(JSON.parse(stdout)['backing-filename']).toBeUndefined();
  });

  it('flattens a 30-deep chain written by Qcow2Writer (random data and zero clusters per layer, short last cluster)', async () => {
    const cluster = 64 * KiB;
    const size = 16 * MiB + 1536;
    const clusters = Math.ceil(size / cluster);
    const expected = Buffer.alloc(size);
    let below: string | undefined;
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let depth = 0; depth < 30; depth++) {
      const image = join(work.path, `ours-${depth}.qcow2`);
      const writer = await Qcow2Writer.create({ path: image, sizeBytes: size, backing: below ? { relativePath: below } : undefined });
      // The full holds 60 % of the clusters; each overlay rewrites about 5 %, a third of them as zero clusters.
      for (let c = 0; c < clusters; c++) {
        const draw = random();
        if (draw >= (depth === 0 ? 0.6 : 0.05)) continue;
        const offset = c * cluster;
        const length = Math.min(cluster, size - offset);
        if (depth > 0 && draw < 0.017) {
          await writer.writeZeroes(offset, length);
          expected.fill(0, offset, offset + length);
        } else {
          const data = randomBytes(length);
          await writer.writeData(offset, data);
          data.copy(expected, offset);
        }
      }
      await writer.finalize();
      below = `ours-${depth}.qcow2`;
    }
    const reference = join(work.path, 'ours-reference.raw');
    const file = await open(reference, 'w');
    await file.writeFile(expected);
    await file.close();
    const top = join(work.path, below!);
    const raw = join(work.path, 'ours.raw');
    expect(await flattenImage(top, raw, 'raw', { windowBytes: 256 * KiB, logger: quiet })).toMatchObject({ method: FlattenMethod.ChainReader, copied: { layers: 30 } });
    expect(await compare(raw, reference)).toBe(IDENTICAL);
    const qcow2 = join(work.path, 'ours-flat.qcow2');
    await flattenImage(top, qcow2, 'qcow2', { logger: quiet });
    expect(await compare(qcow2, reference)).toBe(IDENTICAL);
  });

  it('leaves long zero runs as holes in the raw output', async () => {
    const { top } = await qemuChain(64 * MiB, [{ writes: [{ offset: 0, length: MiB, pattern: 0x44 }] }, { writes: [{ offset: 40 * MiB, length: MiB, pattern: 0x45 }] }]);
    const raw = join(work.path, 'sparse.raw');
    const result = await flattenImage(top, raw, 'raw', { logger: quiet });
    expect(result.copied).toMatchObject({ dataBytes: 2 * MiB, writtenBytes: 2 * MiB });
    const { blocks, size } = await stat(raw);
    expect(size).toBe(64 * MiB);
    expect(blocks * 512).toBeLessThanOrEqual(4 * MiB);
  });

  it('falls back to qemu-img convert for compressed clusters and says why', async () => {
    const plain = join(work.path, 'plain.qcow2');
    const compressed = join(work.path, 'compressed.qcow2');
    const over = join(work.path, 'over.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', plain, String(4 * MiB)]);
    await qemuIo(plain, 'qcow2', [{ offset: 0, length: 2 * MiB, pattern: 0x66 }]);
    await run('qemu-img', ['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', plain, compressed]);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'compressed.qcow2', '-F', 'qcow2', over]);
    await qemuIo(over, 'qcow2', [{ offset: MiB, length: 64 * KiB }]);
    const out = join(work.path, 'fallback.raw');
    const result = await flattenImage(over, out, 'raw', { logger: quiet });
    expect(result).toMatchObject({ method: FlattenMethod.QemuImgConvert, fallbackReason: expect.stringMatching(/compressed cluster/) });
    expect(await compare(out, over)).toBe(IDENTICAL);
  });

  it('stops on abort and leaves no output', async () => {
    const { top } = await qemuChain(16 * MiB, [{ writes: [{ offset: 0, length: 16 * MiB, pattern: 0x77 }] }]);
    const out = join(work.path, 'aborted.raw');
    const controller = new AbortController();
    controller.abort(new Error('user pressed ^C'));
    await expect(flattenImage(top, out, 'raw', { signal: controller.signal, logger: quiet })).rejects.toMatchObject({ code: 'ABORTED' });
    expect((await readdir(work.path)).filter((n) => n.startsWith('aborted'))).toEqual([]);
  });

  it('restoreDisk uses the chain reader and matches the reference disk', async () => {
    const vm: VmRef = { repo: join(work.path, 'repo'), clusterUuid: 'c0ffee00-0000-4000-8000-000000000001', vmUuid: 'a1b2c3d4-0000-4000-8000-000000000003' };
    const reference = new ReferenceDisks(work.path, [16 * MiB + 512]);
    await reference.create();
    const full = await commitTestPoint(vm, null, [[{ offset: 0, length: 8 * MiB, pattern: 0x51 }, { offset: 16 * MiB, length: 512, pattern: 0x52 }]], reference);
    const second = await commitTestPoint(vm, full.pointId, [[{ offset: 2 * MiB, length: 128 * KiB }, { offset: 12 * MiB, length: 64 * KiB, pattern: 0x53 }]], reference);
    const third = await commitTestPoint(vm, second.pointId, [[{ offset: 2 * MiB + 64 * KiB, length: 64 * KiB, pattern: 0x54 }, { offset: 16 * MiB, length: 512 }]], reference);
    expect(third.dir).toBe(pointDir(vm, third.pointId));
    const out = join(work.path, 'restored.raw');
    const result = await restoreDisk({ repo: vm.repo, vm: vm.vmUuid, diskIndex: 0, out, format: 'raw', logger: quiet });
    expect(result.flatten).toMatchObject({ method: FlattenMethod.ChainReader, copied: { layers: 3 } });
    expect(result.verification.ok).toBe(true);
    expect(await compare(out, reference.path(0))).toBe(IDENTICAL);
    expect((await readdir(work.path)).filter((n) => n.includes('restoring'))).toEqual([]);
  });
});

describe('copyWindows', () => {
  it('cuts data runs into aligned, disjoint windows that cover every data byte once', () => {
    let seed = 3;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const size = 16 * MiB + 2560;
    const runs: ChainRun[] = [];
    for (let at = 0; at < size; ) {
      const length = Math.min(size - at, 512 * (1 + Math.floor(random() * 4096)));
      runs.push(random() < 0.5 ? { kind: ChainRunKind.Zero, offset: at, length } : { kind: ChainRunKind.Data, offset: at, length, layer: 0, hostOffset: 1e9 + at });
      at += length;
    }
    for (const options of [
      { align: 4096, windowBytes: 8 * MiB, holeBytes: MiB },
      { align: 65536, windowBytes: 64 * KiB, holeBytes: 0 },
      { align: 4096, windowBytes: 4 * MiB, holeBytes: 100 * MiB },
    ]) {
      const covered = Buffer.alloc(size);
      let end = 0;
      for (const window of copyWindows(runs, size, options)) {
        expect(window.offset % options.align).toBe(0);
        expect(window.offset).toBeGreaterThanOrEqual(end);
        expect(window.length).toBeLessThanOrEqual(options.windowBytes);
        end = window.offset + window.length;
        expect(end % options.align === 0 || end === size).toBe(true);
        for (const piece of window.pieces) {
          expect(piece.at + piece.length).toBeLessThanOrEqual(window.length);
          const guest = window.offset + piece.at;
          expect(piece.hostOffset).toBe(1e9 + guest);
          for (let i = guest; i < guest + piece.length; i++) covered[i]! += 1;
        }
      }
      for (const r of runs) {
        const slice = covered.subarray(r.offset, r.offset + r.length);
        expect(slice.every((n) => n === (r.kind === ChainRunKind.Data ? 1 : 0))).toBe(true);
      }
    }
  });
});
