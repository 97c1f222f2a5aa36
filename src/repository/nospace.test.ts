import { execFile } from 'node:child_process';
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeBytes } from './durable-fs.ts';
import { vmDir, type VmRef } from './layout.ts';
import { ensureFreeSpace, listPoints } from './points.ts';
import { restoreDisk } from './restore.ts';
import { beginPoint } from './staging.ts';
import { MiB, ReferenceDisks, commitTestPoint, tempDir } from './test-repo.ts';
import { xxh3Hex } from './verify.ts';

const run = promisify(execFile);

/** Takes all remaining space of the filesystem holding `dir`; returns a function that gives it back. */
async function fillUp(dir: string, name: string): Promise<() => Promise<void>> {
  const filler = join(dir, name);
  const file = await open(filler, 'w');
  const chunk = Buffer.alloc(256 * 1024, 0x42);
  try {
    for (;;) await file.write(chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    await file.close();
  }
  // Small writes may still fit in the last partial page: take those too.
  const tail = await open(filler, 'a');
  try {
    for (;;) await tail.write(Buffer.alloc(512, 1));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    await tail.close();
  }
  return async () => {
    await run('rm', ['-f', filler]);
  };
}

describe('repository filesystem full (8 MiB tmpfs)', () => {
  let work: Awaited<ReturnType<typeof tempDir>>;
  let mountPoint: string;
  let mountRefused: string | undefined;
  let vm: VmRef;

  beforeAll(async () => {
    work = await tempDir('repo-nospace-');
    mountPoint = join(work.path, 'small');
    await run('mkdir', [mountPoint]);
    try {
      await run('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mountPoint]);
    } catch (err) {
      mountRefused = `mount -t tmpfs was refused: ${(err as Error).message.trim()}`;
    }
    vm = { repo: join(mountPoint, 'repo'), clusterUuid: 'cluster-1', vmUuid: 'vm-1' };
  });
  afterAll(async () => {
    if (!mountRefused) await run('umount', [mountPoint]);
    await work.remove();
  });

  it('refuses to start when the free-space check fails', async (ctx) => {
    if (mountRefused) ctx.skip(mountRefused);
    expect(await freeBytes(mountPoint)).toBeLessThanOrEqual(8 * MiB);
    await expect(ensureFreeSpace(mountPoint, 64 * MiB)).rejects.toMatchObject({ code: 'NO_SPACE', hint: expect.stringMatching(/free space.*retention/) });
    expect(await ensureFreeSpace(mountPoint, MiB)).toBeGreaterThan(MiB);
    // A repository folder not created yet is measured where it will be created: on the small filesystem.
    await expect(ensureFreeSpace(join(mountPoint, 'not', 'yet'), 64 * MiB)).rejects.toMatchObject({ code: 'NO_SPACE' });
  });

  it('ENOSPC while writing a point yields NoSpace and leaves no visible point, no staging and no lock', async (ctx) => {
    if (mountRefused) ctx.skip(mountRefused);
    const staged = await beginPoint(vm, { parentPointId: null });
    await staged.createDiskImage(0, 16 * MiB, { overlay: false });
    const giveBack = await fillUp(mountPoint, 'filler-1');
    try {
      const checksums = Array.from({ length: 20_000 }, (_, i) => ({ offset: i * 4096, length: 4096, hash: xxh3Hex(Buffer.from([i & 0xff])) }));
      const error = await staged
        .writeDisk({
          index: 0,
          uuid: 'disk-0-uuid',
          logicalSizeBytes: 16 * MiB,
          stats: { logicalBytes: 16 * MiB, changedBytes: 0, transferredBytes: 0, zeroBytes: 0, durationMs: 1, throughputBytesPerSec: 0 },
          checksums,
          zeroRanges: [],
        })
        .catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'NO_SPACE', hint: expect.stringMatching(/free space.*retention/) });
      expect(await staged.abort()).toBe(true);
      expect(await listPoints(vm.repo)).toEqual([]);
      expect(await readdir(vmDir(vm))).toEqual([]);
      // Nothing can even begin on a full filesystem: the journal does not fit, and nothing is left behind.
      const giveBackMore = await fillUp(mountPoint, 'filler-2');
      try {
        await expect(beginPoint(vm, { parentPointId: null })).rejects.toMatchObject({ code: 'NO_SPACE' });
        expect(await readdir(vmDir(vm))).toEqual([]);
      } finally {
        await giveBackMore();
      }
    } finally {
      await giveBack();
    }
  });

  it('a restore that does not fit yields NoSpace and no output file', async (ctx) => {
    if (mountRefused) ctx.skip(mountRefused);
    // The repository lives on the big temp filesystem; only the restore target is small.
    const bigVm = { repo: join(work.path, 'repo'), clusterUuid: 'cluster-1', vmUuid: 'vm-2' };
    const reference = new ReferenceDisks(work.path, [32 * MiB]);
    await reference.create();
    await commitTestPoint(bigVm, null, [[{ offset: 0, length: 12 * MiB, pattern: 0x77 }]], reference);
    const out = join(mountPoint, 'restored.raw');
    await expect(restoreDisk({ repo: bigVm.repo, vm: 'vm-2', diskIndex: 0, out, format: 'raw' })).rejects.toMatchObject({ code: 'NO_SPACE' });
    expect((await readdir(mountPoint)).filter((n) => n.includes('restor'))).toEqual([]);
  });
});
