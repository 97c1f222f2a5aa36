import { execFile } from 'node:child_process';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { pointDir, type VmRef } from './layout.ts';
import type { RestorePoint } from './points.ts';
import { restoreDisk } from './restore.ts';
import { MiB, ReferenceDisks, commitTestPoint, qemuIo, tempDir } from './test-repo.ts';
import { verifyRepository } from './verify.ts';

const run = promisify(execFile);

const MapEntrySchema = z.object({ start: z.number(), length: z.number(), depth: z.number(), data: z.boolean(), offset: z.number().optional() });

/** Host offset in `image` of guest byte `guestOffset`, which must be data stored in that very layer. */
async function hostOffsetOf(image: string, guestOffset: number): Promise<number> {
  const { stdout } = await run('qemu-img', ['map', '--output=json', image]);
  const entry = z.array(MapEntrySchema).parse(JSON.parse(stdout)).find((e) => e.start <= guestOffset && guestOffset < e.start + e.length);
  if (!entry || entry.depth !== 0 || !entry.data || entry.offset === undefined) throw new Error(`guest ${guestOffset} is not data in ${image}`);
  return entry.offset + (guestOffset - entry.start);
}

async function flipByte(path: string, at: number): Promise<void> {
  const file = await open(path, 'r+');
  try {
    const byte = Buffer.alloc(1);
    await file.read(byte, 0, 1, at);
    byte[0] = byte[0]! ^ 0xff;
    await file.write(byte, 0, 1, at);
  } finally {
    await file.close();
  }
}

describe('verify', () => {
  let work: Awaited<ReturnType<typeof tempDir>>;
  let vm: VmRef;
  let points: RestorePoint[];

  beforeEach(async () => {
    work = await tempDir('repo-verify-');
    vm = { repo: join(work.path, 'repo'), clusterUuid: 'cluster-1', vmUuid: 'vm-1' };
    const reference = new ReferenceDisks(work.path, [32 * MiB, 16 * MiB]);
    await reference.create();
    const full = await commitTestPoint(vm, null, [[{ offset: 0, length: 4 * MiB, pattern: 0xab }], [{ offset: MiB, length: 256 * 1024, pattern: 0x11 }]], reference);
    const middle = await commitTestPoint(vm, full.pointId, [[{ offset: 2 * MiB, length: MiB, pattern: 0xcd }, { offset: 8 * MiB, length: MiB }], []], reference);
    const top = await commitTestPoint(vm, middle.pointId, [[{ offset: 20 * MiB, length: 128 * 1024, pattern: 0xef }], [{ offset: 0, length: 64 * 1024, pattern: 0x22 }]], reference);
    points = [full, middle, top];
  });
  afterEach(async () => work.remove());

  it('passes on good data after reading every recorded block and zero range', async () => {
    const report = await verifyRepository(vm.repo);
    expect(report.issues).toEqual([]);
    expect(report).toMatchObject({ ok: true, points: 3, images: 6, blocksChecked: 5 });
    // 4 MiB + 256 KiB + 1 MiB + 1 MiB zeros + 128 KiB + 64 KiB
    expect(report.bytesChecked).toBe(4 * MiB + 256 * 1024 + MiB + MiB + 128 * 1024 + 64 * 1024);
  });

  it('pinpoints a flipped byte in a data cluster of the middle image: point, disk and guest offset', async () => {
    const [, middle, top] = points;
    const image = join(pointDir(vm, middle!.pointId), 'disk-0.qcow2');
    const guestOffset = 2 * MiB + 12_345;
    await flipByte(image, await hostOffsetOf(image, guestOffset));

    const report = await verifyRepository(vm.repo, { vm: vm.vmUuid });
    expect(report.ok).toBe(false);
    expect(report.issues).toHaveLength(1);
    const [issue] = report.issues;
    expect(issue).toMatchObject({ kind: 'checksum', vmUuid: vm.vmUuid, pointId: middle!.pointId, diskIndex: 0 });
    expect(issue!.range!.offset).toBeLessThanOrEqual(guestOffset);
    expect(issue!.range!.offset + issue!.range!.length).toBeGreaterThan(guestOffset);

    // The top point depends on the damaged image: verifying it (with its ancestors) finds the damage too,
    // and a restore that re-reads checksums refuses.
    const topOnly = await verifyRepository(vm.repo, { vm: vm.vmUuid, point: top!.pointId });
    expect(topOnly.issues.map((i) => i.pointId)).toEqual([middle!.pointId]);
    await expect(
      restoreDisk({ repo: vm.repo, vm: vm.vmUuid, diskIndex: 0, out: join(work.path, 'out.raw'), format: 'raw', verifyChecksums: true }),
    ).rejects.toMatchObject({ code: 'INTEGRITY' });
  });

  // The top's disk 1 is an overlay, checked without opening its backing file: its own metadata still is.
  it.each([
    { which: 'the full', index: 0, guestOffset: MiB },
    { which: 'the top incremental', index: 2, guestOffset: 0 },
  ])('reports qemu-img check corruption in $which with its message', async ({ index, guestOffset }) => {
    const damaged = points[index]!;
    const image = join(pointDir(vm, damaged.pointId), 'disk-1.qcow2');
    // Zero the refcount of the first data cluster: header field refcount_table_offset (bytes 48..55) → first
    // refcount block → 16-bit entry of that cluster.
    const file = await open(image, 'r+');
    try {
      const header = Buffer.alloc(64);
      await file.read(header, 0, 64, 0);
      const clusterBits = header.readUInt32BE(20);
      const refcountTable = Number(header.readBigUInt64BE(48));
      const entry = Buffer.alloc(8);
      await file.read(entry, 0, 8, refcountTable);
      const dataCluster = (await hostOffsetOf(image, guestOffset)) >> clusterBits;
      await file.write(Buffer.alloc(2), 0, 2, Number(entry.readBigUInt64BE(0)) + dataCluster * 2);
    } finally {
      await file.close();
    }
    const report = await verifyRepository(vm.repo, { checksums: false });
    expect(report.issues).toHaveLength(1);
    expect(report.issues[0]).toMatchObject({ kind: 'image-check', pointId: damaged.pointId, diskIndex: 1 });
    expect(report.issues[0]!.message).toMatch(/refcount=0 reference=1/);
  });

  it('finds data where zeros were recorded, and a broken chain link', async () => {
    const [full, middle] = points;
    await qemuIo(join(pointDir(vm, middle!.pointId), 'disk-0.qcow2'), 'qcow2', [{ offset: 8 * MiB + 4096, length: 512, pattern: 0x01 }]);
    // Point the top image of disk 1 at the wrong parent: qemu-img follows it, the manifest disagrees.
    await run('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', `../${full!.pointId}/disk-0.qcow2`, '-F', 'qcow2', join(pointDir(vm, points[2]!.pointId), 'disk-1.qcow2')]);
    const report = await verifyRepository(vm.repo);
    const kinds = report.issues.map((i) => `${i.kind}:${i.pointId === middle!.pointId ? 'middle' : i.pointId === points[2]!.pointId ? 'top' : 'full'}:${i.diskIndex}`);
    expect(kinds).toContain('non-zero:middle:0');
    expect(kinds).toContain('chain:top:1');
    const nonZero = report.issues.find((i) => i.kind === 'non-zero');
    expect(nonZero?.message).toContain(`guest byte ${8 * MiB + 4096}`);
  });
});
