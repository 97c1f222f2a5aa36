import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../test/support/ports.ts';
import { isAppError } from '../lib/errors.ts';
import { createSampleDisk, type SampleDiskLayout } from '../mover/sample-disk.ts';
import { RegionType } from '../mover/types.ts';
import { AllocationFlag, NbdClient } from './client.ts';
import { startQemuNbd, type QemuNbdServer } from './qemu-nbd.ts';

const SIZE = 16 * 1024 * 1024 + 4096 * 3; // not a multiple of 64 KiB

describe('NbdClient against qemu-nbd', () => {
  let dir: string;
  let image: string;
  let bytes: Buffer;
  let layout: SampleDiskLayout;
  let server: QemuNbdServer;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'nbd-client-test-'));
    image = path.join(dir, 'disk.raw');
    layout = await createSampleDisk(image, { sizeBytes: SIZE, seed: 'nbd-client', unitBytes: 12 * 1024, maxRunUnits: 40 });
    bytes = await readFile(image);
    server = await startQemuNbd({ image, format: 'raw', shared: 4 });
  });

  afterAll(async () => {
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('negotiates structured replies, base:allocation and the block size', async () => {
    const client = await NbdClient.connect({ endpoint: { socketPath: server.socketPath } });
    try {
      expect(client.sizeBytes).toBe(SIZE);
      expect(client.info.structuredReplies).toBe(true);
      expect(client.info.metaContexts.has('base:allocation')).toBe(true);
      expect(client.info.blockSize.maximum).toBeGreaterThanOrEqual(1024 * 1024);
    } finally {
      await client.close();
    }
  });

  it('reads aligned, unaligned and hole ranges equal to the file, many requests in flight', async () => {
    const client = await NbdClient.connect({ endpoint: { socketPath: server.socketPath } });
    try {
      const ranges = [
        [0, 1024 * 1024],
        [4096 * 7, 65536 * 3],
        [12345, 777_777],
        [SIZE - 5000, 5000],
        [SIZE - 1, 1],
      ] as const;
      const holeRun = layout.runs.find((r) => r.type === RegionType.Zeroed && r.length >= 8192);
      const all = [...ranges, ...(holeRun ? [[holeRun.offset, holeRun.length] as const] : [])];
      const targets = all.map(([, length]) => Buffer.alloc(length, 0xaa)); // 0xaa proves holes are zero-filled
      const results = await Promise.all(all.map(([offset, length], i) => client.read(offset, length, targets[i]!)));
      all.forEach(([offset, length], i) => expect(targets[i]!.equals(bytes.subarray(offset, offset + length))).toBe(true));
      if (holeRun) expect(results.at(-1)!.holes.reduce((n, h) => n + h.length, 0)).toBe(holeRun.length);
    } finally {
      await client.close();
    }
  });

  it('reads the whole disk in 1 MiB requests into one reused buffer set', async () => {
    const client = await NbdClient.connect({ endpoint: { socketPath: server.socketPath } });
    try {
      const whole = Buffer.alloc(SIZE);
      const jobs: Promise<unknown>[] = [];
      for (let offset = 0; offset < SIZE; offset += 1024 * 1024) {
        jobs.push(client.read(offset, Math.min(1024 * 1024, SIZE - offset), whole, { targetStart: offset }));
      }
      await Promise.all(jobs);
      expect(whole.equals(bytes)).toBe(true);
    } finally {
      await client.close();
    }
  });

  it('block status matches the holes of the sparse file', async () => {
    const client = await NbdClient.connect({ endpoint: { socketPath: server.socketPath } });
    try {
      const extents = [];
      for await (const extent of client.extents()) extents.push(extent);
      expect(extents[0]!.offset).toBe(0);
      expect(extents.reduce((n, e) => n + e.length, 0)).toBe(SIZE);
      // Every byte in a hole extent is zero in the file, and every data run lies in data extents.
      for (const extent of extents.filter((e) => e.flags & AllocationFlag.Zero)) {
        expect(bytes.subarray(extent.offset, extent.offset + extent.length).every((b) => b === 0)).toBe(true);
      }
      const dataExtentBytes = extents.filter((e) => !(e.flags & AllocationFlag.Hole)).reduce((n, e) => n + e.length, 0);
      expect(dataExtentBytes).toBeGreaterThanOrEqual(layout.dataBytes);
    } finally {
      await client.close();
    }
  });

  it('rejects reads outside the export with a hint', async () => {
    const client = await NbdClient.connect({ endpoint: { socketPath: server.socketPath } });
    try {
      await expect(client.read(SIZE - 10, 20, Buffer.alloc(20))).rejects.toThrow(/outside the export/);
    } finally {
      await client.close();
    }
  });

  it('fails requests in flight with a DataPath error when the server dies', async () => {
    const own = await startQemuNbd({ image, format: 'raw' });
    const client = await NbdClient.connect({ endpoint: { socketPath: own.socketPath } });
    const target = Buffer.alloc(1024 * 1024);
    await client.read(0, target.length, target);
    process.kill(own.pid, 'SIGKILL');
    await own.exited;
    const err = await client.read(0, target.length, target).catch((e: unknown) => e);
    expect(isAppError(err) && err.code).toBe('DATA_PATH');
    expect(isAppError(err) && err.retryable).toBe(false);
    await own.stop();
  });

  it('an aborted read rejects at once and leaves the connection usable', async () => {
    const client = await NbdClient.connect({ endpoint: { socketPath: server.socketPath } });
    try {
      const controller = new AbortController();
      const target = Buffer.alloc(4 * 1024 * 1024);
      const read = client.read(0, target.length, target, { signal: controller.signal });
      controller.abort(new Error('operator cancelled'));
      await expect(read).rejects.toMatchObject({ code: 'ABORTED' });
      const again = Buffer.alloc(65536);
      await client.read(65536, 65536, again);
      expect(again.equals(bytes.subarray(65536, 131072))).toBe(true);
    } finally {
      await client.close();
    }
  });

  it('reports a clear error for a missing socket and for a bad image', async () => {
    await expect(NbdClient.connect({ endpoint: { socketPath: path.join(dir, 'missing.sock') } })).rejects.toMatchObject({ code: 'DATA_PATH', retryable: true });
    await expect(startQemuNbd({ image: path.join(dir, 'missing.raw') })).rejects.toThrow(/qemu-nbd exited with code 1.*missing\.raw/s);
  });

  it('qemu-nbd dies with the process that started it, even on SIGKILL', async () => {
    const { spawn } = await import('node:child_process');
    const script = `import { startQemuNbd } from ${JSON.stringify(path.resolve('src/nbd/qemu-nbd.ts'))};
      const s = await startQemuNbd({ image: ${JSON.stringify(image)} }); console.log(s.pid + ' ' + s.socketPath); setInterval(() => {}, 1000);`;
    const parent = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const [pidText, socketPath] = await new Promise<string[]>((resolve) => parent.stdout.once('data', (d: Buffer) => resolve(d.toString().trim().split(' '))));
    const pid = Number(pidText);
    expect(() => process.kill(pid, 0)).not.toThrow();
    parent.kill('SIGKILL');
    let alive = true;
    for (let i = 0; i < 200 && alive; i++) {
      await new Promise((r) => setTimeout(r, 10));
      try {
        process.kill(pid, 0);
      } catch {
        alive = false;
      }
    }
    expect(alive).toBe(false);
    await rm(path.dirname(socketPath!), { recursive: true, force: true });
  });

  it('falls back to simple replies when the server has no structured replies (nbdkit --no-sr)', async () => {
    const { spawn } = await import('node:child_process');
    const socketPath = path.join(dir, 'nbdkit.sock');
    const child = spawn('nbdkit', ['--no-sr', '--exit-with-parent', '-f', '-U', socketPath, 'file', image], { stdio: 'ignore' });
    try {
      let client: NbdClient | undefined;
      for (let attempt = 0; attempt < 200 && !client; attempt++) {
        client = await NbdClient.connect({ endpoint: { socketPath } }).catch(async () => {
          await new Promise((r) => setTimeout(r, 20));
          return undefined;
        });
      }
      if (!client) throw new Error('nbdkit never accepted');
      expect(client.info.structuredReplies).toBe(false);
      expect(client.info.metaContexts.size).toBe(0);
      const targets = [Buffer.alloc(777_777), Buffer.alloc(65536), Buffer.alloc(5000)];
      const offsets = [12345, 0, SIZE - 5000];
      await Promise.all(targets.map((t, i) => client.read(offsets[i]!, t.length, t)));
      targets.forEach((t, i) => expect(t.equals(bytes.subarray(offsets[i]!, offsets[i]! + t.length))).toBe(true));
      await expect(client.blockStatus(0, 4096)).rejects.toMatchObject({ code: 'UNSUPPORTED' });
      await client.close();
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('works over TCP too', async () => {
    const { spawn } = await import('node:child_process');
    const port = await freePort();
    const child = spawn('qemu-nbd', ['--read-only', '--persistent', '-b', '127.0.0.1', '-p', String(port), '-f', 'raw', image], { stdio: 'ignore' });
    try {
      let client: NbdClient | undefined;
      for (let attempt = 0; attempt < 200 && !client; attempt++) {
        client = await NbdClient.connect({ endpoint: { host: '127.0.0.1', port } }).catch(async () => {
          await new Promise((r) => setTimeout(r, 20));
          return undefined;
        });
      }
      if (!client) throw new Error('qemu-nbd on TCP never accepted');
      const target = Buffer.alloc(300_000);
      await client.read(1000, target.length, target);
      expect(target.equals(bytes.subarray(1000, 301_000))).toBe(true);
      await client.close();
    } finally {
      child.kill('SIGKILL');
    }
  });
});
