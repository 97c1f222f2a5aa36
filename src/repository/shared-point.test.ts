/**
 * Multi-process points on real files and real qcow2 images: two "disk processes" prepare the same staging
 * folder and write their results without the VM lock, the commit builds the manifest from the result files, a
 * retried commit returns the committed point, leftovers of other attempts are swept, and a failed attempt is removed.
 */
import { execFile } from 'node:child_process';
import { access, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { newPointId, stagingDir, vmDir, type VmRef } from './layout.ts';
import { listVmPoints } from './points.ts';
import { commitSharedPoint, prepareSharedPoint, removeSharedPoint, type SharedPoint } from './shared-point.ts';
import { beginPoint, type Leftover } from './staging.ts';
import { MiB, tempDir, vmConfig } from './test-repo.ts';

const run = promisify(execFile);
const size = 4 * MiB;

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** What one disk Job does: an image at its target (a real qcow2) and its result file. */
async function writeDisk(point: SharedPoint, index: number, overlay: boolean): Promise<void> {
  const target = await point.copyTarget(index, size, { overlay });
  const backing = target.backing ? ['-b', target.backing.relativePath, '-F', 'qcow2'] : [];
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', ...backing, target.path, String(size)]);
  await point.writeDiskResult({
    index,
    uuid: `disk-${index}-uuid`,
    logicalSizeBytes: size,
    stats: { logicalBytes: size, changedBytes: 0, transferredBytes: 0, zeroBytes: 0, durationMs: 1, throughputBytesPerSec: 0 },
    checksums: [],
    zeroRanges: [],
    overlay,
    ...(overlay ? {} : { fullReason: 'new disk' }),
  });
}

describe('shared (multi-process) restore points', () => {
  let work: Awaited<ReturnType<typeof tempDir>>;
  let vm: VmRef;
  const released: string[] = [];
  const commitRequest = (diskIndexes: number[]) => ({
    diskIndexes,
    fullTypeReason: 'first backup',
    vm: vmConfig(vm, [size, size]),
    consistency: { requested: 'auto' as const, obtained: 'CRASH_CONSISTENT' as const },
    recoveryPoint: { id: 'rp-1', generation: 'v4' as const, disks: [{ diskUuid: 'disk-0-uuid' }, { diskUuid: 'disk-1-uuid' }] },
    cleanupLeftover: async (leftover: Leftover) => void released.push(leftover.pointId),
  });
  const spec = (pointId: string, parentPointId: string | null = null) => ({
    pointId,
    parentPointId,
    createdAt: new Date(),
    resources: [{ kind: 'recovery-point' as const, id: `rp-${pointId}` }],
  });

  beforeEach(async () => {
    work = await tempDir('shared-point-');
    vm = { repo: join(work.path, 'repo'), clusterUuid: 'cluster-1', vmUuid: 'vm-1' };
    released.length = 0;
  });
  afterEach(async () => work.remove());

  it('lets each disk process prepare the same staging, then commits a full and an incremental from the result files', async () => {
    const pointId = newPointId();
    const [first, second] = await Promise.all([prepareSharedPoint(vm, spec(pointId)), prepareSharedPoint(vm, spec(pointId))]);
    await Promise.all([writeDisk(first, 0, false), writeDisk(second, 1, false)]);
    await expect(commitSharedPoint(vm, pointId, commitRequest([0, 1, 2]))).rejects.toThrow(/disk 2 has no result/);
    await expect(commitSharedPoint(vm, pointId, commitRequest([0]))).rejects.toThrow(/does not expect: disk-1.result.json/);
    const full = await commitSharedPoint(vm, pointId, commitRequest([0, 1]));
    expect(full.manifest.type).toBe('full');
    expect(full.manifest.disks.map((d) => d.index)).toEqual([0, 1]);
    // A retried commit Job finds the point committed and returns it unchanged.
    const again = await commitSharedPoint(vm, pointId, commitRequest([0, 1]));
    expect(again.manifest).toEqual(full.manifest);
    await expect(prepareSharedPoint(vm, spec(pointId))).rejects.toThrow(/already committed/);

    const nextId = newPointId();
    const next = await prepareSharedPoint(vm, spec(nextId, pointId));
    await writeDisk(next, 0, true);
    await writeDisk(next, 1, false);
    const incremental = await commitSharedPoint(vm, nextId, commitRequest([0, 1]));
    expect(incremental.manifest.type).toBe('incremental');
    expect(incremental.manifest.parentPointId).toBe(pointId);
    expect(incremental.manifest.typeReason).toBe(`incremental on ${pointId}; disk 1: new disk`);
    expect(incremental.manifest.disks.map((d) => d.backingFile)).toEqual([`../${pointId}/disk-0.qcow2`, null]);
    expect((await listVmPoints(vm)).map((p) => p.pointId)).toEqual([pointId, nextId]);
    expect(await readdir(vmDir(vm))).not.toContain('.lock');
  });

  it('refuses a disk process whose parent differs from the staging journal', async () => {
    const parent = newPointId();
    const pointId = newPointId();
    await prepareSharedPoint(vm, spec(pointId));
    await expect(prepareSharedPoint(vm, spec(pointId, parent))).rejects.toThrow(/chains onto nothing/);
  });

  it('sweeps the staging of other dead attempts at commit (releasing them first) and keeps its own', async () => {
    const dead = await beginPoint(vm, { parentPointId: null });
    await dead.addResource({ kind: 'recovery-point', id: 'rp-dead' });
    await dead.abort(); // keeps the folder: the journal still lists a recovery point
    expect(await exists(dead.dir)).toBe(true);
    const pointId = newPointId();
    const point = await prepareSharedPoint(vm, spec(pointId));
    await writeDisk(point, 0, false);
    const committed = await commitSharedPoint(vm, pointId, commitRequest([0]));
    expect(committed.leftoversRemoved).toEqual([dead.pointId]);
    expect(released).toEqual([dead.pointId]);
    expect(await exists(dead.dir)).toBe(false);
  });

  it('removes a failed attempt and reports whether there was one', async () => {
    const pointId = newPointId();
    const point = await prepareSharedPoint(vm, spec(pointId));
    await writeDisk(point, 0, false);
    expect(await removeSharedPoint(vm, pointId)).toBe(true);
    expect(await exists(stagingDir(vm, pointId))).toBe(false);
    expect(await removeSharedPoint(vm, pointId)).toBe(false);
    await expect(commitSharedPoint(vm, pointId, commitRequest([0]))).rejects.toThrow(/no staging folder/);
  });
});
