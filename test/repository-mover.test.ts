/**
 * Repository + data path together: copyDisk (qemu-nbd → NBD client → qcow2 writer) fills staged points, the
 * repository commits them, verify re-reads the mover's checksums and restores equal the source snapshots.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startQemuNbd, type QemuNbdServer } from '../src/nbd/qemu-nbd.ts';
import { copyDisk } from '../src/mover/copy-disk.ts';
import { changeSampleDisk, createSampleDisk } from '../src/mover/sample-disk.ts';
import { RegionType, type Region } from '../src/mover/types.ts';
import { beginPoint, restoreDisk, verifyRepository, type RestorePoint, type VmRef } from '../src/repository/index.ts';
import { vmConfig } from '../src/repository/test-repo.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const SIZE = 24 * MiB + 3 * 512;

describe('repository with the real data path', () => {
  let dir: string;
  let vm: VmRef;
  const servers: QemuNbdServer[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'repo-mover-'));
    vm = { repo: join(dir, 'repo'), clusterUuid: 'cluster-1', vmUuid: 'vm-1' };
  });
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await rm(dir, { recursive: true, force: true });
  });

  async function backup(source: string, parent: RestorePoint | null, regions: Region[]): Promise<RestorePoint> {
    const server = await startQemuNbd({ image: source, format: 'raw' });
    servers.push(server);
    const staged = await beginPoint(vm, { parentPointId: parent?.pointId ?? null });
    try {
      const target = await staged.copyTarget(0, SIZE, { overlay: parent !== null });
      const result = await copyDisk({ source: { socketPath: server.socketPath }, regions, sizeBytes: SIZE, target });
      const zeroRanges = regions.filter((r) => r.type === RegionType.Zeroed).map(({ offset, length }) => ({ offset, length }));
      await staged.writeDisk({ index: 0, uuid: 'disk-0-uuid', logicalSizeBytes: SIZE, stats: result.stats, checksums: result.checksums, zeroRanges });
      return await staged.commit({
        type: parent ? 'incremental' : 'full',
        typeReason: parent ? 'changed regions' : 'first backup',
        vm: vmConfig(vm, [SIZE]),
        consistency: { requested: 'crash', obtained: 'CRASH_CONSISTENT' },
        recoveryPoint: { id: `rp-${staged.pointId}`, generation: 'v4', disks: [{ diskUuid: 'disk-0-uuid' }] },
      });
    } catch (err) {
      await staged.abort();
      throw err;
    } finally {
      await server.stop();
    }
  }

  it('full then two incrementals: verify passes and every point restores to its snapshot', async () => {
    const live = join(dir, 'live.raw');
    const layout = await createSampleDisk(live, { sizeBytes: SIZE, seed: 'repo', unitBytes: 20 * 1024, maxRunUnits: 80 });
    const snapshots: string[] = [];
    const points: RestorePoint[] = [];
    for (let level = 0; level < 3; level++) {
      const regions = level === 0 ? layout.runs : await changeSampleDisk(live, SIZE, { seed: `change-${level}`, fraction: 0.05, blockBytes: 24 * 1024, alignBytes: 4096, zeroShare: 0.3 });
      const snapshot = join(dir, `snap-${level}.raw`);
      await run('cp', ['--sparse=always', live, snapshot]);
      snapshots.push(snapshot);
      points.push(await backup(snapshot, points.at(-1) ?? null, regions));
    }
    expect(points.map((p) => p.manifest.type)).toEqual(['full', 'incremental', 'incremental']);
    expect(points[2]!.manifest.disks[0]!.checksummedBlocks).toBeGreaterThan(0);
    expect(points[2]!.manifest.disks[0]!.zeroRanges).toBeGreaterThan(0);

    const report = await verifyRepository(vm.repo);
    expect(report.issues).toEqual([]);
    expect(report.blocksChecked).toBe(points.reduce((n, p) => n + p.manifest.disks[0]!.checksummedBlocks, 0));

    for (const [level, point] of points.entries()) {
      const out = join(dir, `restored-${level}.raw`);
      await restoreDisk({ repo: vm.repo, vm: vm.vmUuid, point: point.pointId, diskIndex: 0, out, format: 'raw' });
      const { stdout } = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', snapshots[level]!, out]);
      expect(stdout).toContain('Images are identical');
    }
  });
});
