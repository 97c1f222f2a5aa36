import { execFile } from 'node:child_process';
import { cp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isAppError } from '../lib/errors.ts';
import { pointDir, type VmRef } from './layout.ts';
import { ManifestSchema } from './manifest.ts';
import { chainOf, listPoints, listVmPoints, resolvePoint, resolveVm, summarizePoints } from './points.ts';
import { ImageInfoSchema } from './qemu-img.ts';
import { restoreDisk } from './restore.ts';
import { verifyRepository } from './verify.ts';
import { MiB, ReferenceDisks, commitTestPoint, tempDir } from './test-repo.ts';

const run = promisify(execFile);

/** Stock qemu-img's view of an image and every image below it, top first. */
async function imageInfoChain(imagePath: string) {
  const { stdout } = await run('qemu-img', ['info', '--output=json', '--backing-chain', '-U', imagePath]);
  return ImageInfoSchema.array().min(1).parse(JSON.parse(stdout));
}

/** qemu-img compare exits 0 when the guest-visible content is identical. */
async function sameContent(a: string, b: string): Promise<boolean> {
  try {
    await run('qemu-img', ['compare', '-q', a, b]);
    return true;
  } catch {
    return false;
  }
}

describe('restore-point chains', () => {
  let work: Awaited<ReturnType<typeof tempDir>>;
  let vm: VmRef;
  let reference: ReferenceDisks;

  beforeEach(async () => {
    work = await tempDir('repo-chain-');
    vm = { repo: join(work.path, 'repo'), clusterUuid: 'c0ffee00-0000-4000-8000-000000000001', vmUuid: 'a1b2c3d4-0000-4000-8000-000000000002' };
    reference = new ReferenceDisks(work.path, [32 * MiB, 16 * MiB]);
    await reference.create();
  });
  afterEach(async () => work.remove());

  async function threePoints() {
    const full = await commitTestPoint(vm, null, [[{ offset: 0, length: 4 * MiB, pattern: 0xab }], [{ offset: MiB, length: 64 * 1024, pattern: 0x11 }]], reference);
    await reference.copy(0, join(work.path, 'after-full-0.raw'));
    const second = await commitTestPoint(vm, full.pointId, [[{ offset: 2 * MiB, length: MiB, pattern: 0xcd }, { offset: 8 * MiB, length: 64 * 1024 }], []], reference);
    const third = await commitTestPoint(vm, second.pointId, [[{ offset: 20 * MiB, length: 128 * 1024, pattern: 0xef }], [{ offset: 0, length: 64 * 1024, pattern: 0x22 }]], reference);
    return [full, second, third] as const;
  }

  it('chains overlays by relative backing path and lists points newest last', async () => {
    const [full, second, third] = await threePoints();
    expect(second.manifest.disks[0]?.backingFile).toBe(`../${full.pointId}/disk-0.qcow2`);
    expect(full.manifest).toMatchObject({ type: 'full', parentPointId: null });
    expect(third.manifest).toMatchObject({ type: 'incremental', parentPointId: second.pointId });

    const listed = await listPoints(vm.repo);
    expect(listed.map((p) => p.pointId)).toEqual([full.pointId, second.pointId, third.pointId]);
    expect(chainOf(await listVmPoints(vm), third.pointId).map((p) => p.pointId)).toEqual([third.pointId, second.pointId, full.pointId]);
    expect((await resolvePoint(vm, 'latest')).pointId).toBe(third.pointId);
    expect((await listVmPoints(vm)).at(-1)?.manifest.recoveryPoint.id).toBe(`rp-${third.pointId}`);
    expect(await resolveVm(vm.repo, third.manifest.vm.name)).toEqual(vm);
    expect(summarizePoints(listed).map((s) => [s.type, s.chainDepth, s.parentPointId])).toEqual([
      ['full', 0, null],
      ['incremental', 1, full.pointId],
      ['incremental', 2, second.pointId],
    ]);

    // A point-named folder without a valid manifest is not a restore point; verify names it.
    const bogus = pointDir(vm, '20991231T235959Z-000000');
    await mkdir(bogus);
    await writeFile(join(bogus, 'manifest.json'), '{"apiVersion":"sendense.io/restore-point/v1"}');
    expect(await listPoints(vm.repo)).toHaveLength(3);
    const report = await verifyRepository(vm.repo, { checksums: false });
    expect(report.issues).toMatchObject([{ kind: 'unreadable-point', pointId: '20991231T235959Z-000000' }]);

    // The manifest on disk is what the schema accepts, with the checksum file next to the image.
    const raw = JSON.parse(await readFile(join(pointDir(vm, second.pointId), 'manifest.json'), 'utf8'));
    const manifest = ManifestSchema.parse(raw);
    expect(manifest.disks[0]).toMatchObject({ checksums: 'disk-0.sums.ndjson', checksummedBlocks: 1, zeroRanges: 1 });
  });

  it('survives moving the whole repository: stock qemu-img follows the chain and restores match the source', async () => {
    const [full, second, third] = await threePoints();
    const moved = join(work.path, 'elsewhere', 'copy-of-repo');
    await cp(vm.repo, moved, { recursive: true });
    await run('rm', ['-rf', vm.repo]);
    const movedVm = { ...vm, repo: moved };

    const chain = await imageInfoChain(join(pointDir(movedVm, third.pointId), 'disk-0.qcow2'));
    expect(chain.map((i) => resolve(i.filename))).toEqual([third, second, full].map((p) => join(pointDir(movedVm, p.pointId), 'disk-0.qcow2')));
    expect(chain.map((i) => i['backing-filename'])).toEqual([`../${second.pointId}/disk-0.qcow2`, `../${full.pointId}/disk-0.qcow2`, undefined]);

    for (const [disk, format] of [[0, 'raw'], [1, 'qcow2']] as const) {
      const out = join(work.path, `restored-${disk}.${format}`);
      const result = await restoreDisk({ repo: moved, vm: vm.vmUuid, diskIndex: disk, out, format });
      expect(result.point.pointId).toBe(third.pointId);
      expect(await sameContent(out, reference.path(disk))).toBe(true);
      const info = await imageInfoChain(out);
      expect(info).toHaveLength(1);
      expect(info[0]?.format).toBe(format);
    }

    const older = join(work.path, 'restored-full.raw');
    await restoreDisk({ repo: moved, vm: vm.vmUuid, point: full.pointId, diskIndex: 0, out: older, format: 'raw', verifyChecksums: true });
    expect(await sameContent(older, join(work.path, 'after-full-0.raw'))).toBe(true);
    expect(await sameContent(older, reference.path(0))).toBe(false);
  });

  it('refuses to restore a point whose parent is gone, and names the missing link', async () => {
    const [, second, third] = await threePoints();
    await run('rm', ['-rf', pointDir(vm, second.pointId)]);
    const error = await restoreDisk({ repo: vm.repo, vm: vm.vmUuid, point: third.pointId, diskIndex: 0, out: join(work.path, 'x.raw'), format: 'raw' }).catch((e: unknown) => e);
    expect(isAppError(error) && error.code).toBe('INTEGRITY');
    expect(String((error as Error).message)).toContain(second.pointId);
    await expect(readFile(join(work.path, 'x.raw'))).rejects.toThrow(/ENOENT/);
  });
});
