/**
 * Test support: builds real restore points with qemu-img/qemu-io and keeps a raw reference image of what each
 * disk should contain, so tests compare restores and verify results against independent bytes.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { BlockChecksum } from '../mover/types.ts';
import type { ByteRange } from './checksums.ts';
import type { VmRef } from './layout.ts';
import type { VmConfig } from './manifest.ts';
import type { RestorePoint } from './points.ts';
import { beginPoint } from './staging.ts';
import { xxh3Hex } from './verify.ts';

const run = promisify(execFile);

export const MiB = 1024 * 1024;

/** A write into a disk: `pattern` bytes, or zeros recorded without data when `pattern` is undefined. */
export interface DiskWrite {
  offset: number;
  length: number;
  pattern?: number;
}

export async function tempDir(prefix: string): Promise<{ path: string; remove: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

export async function qemuIo(image: string, format: 'raw' | 'qcow2', writes: DiskWrite[]): Promise<void> {
  const args = ['-f', format];
  for (const w of writes) args.push('-c', w.pattern === undefined ? `write -z ${w.offset} ${w.length}` : `write -P ${w.pattern} ${w.offset} ${w.length}`);
  await run('qemu-io', [...args, image]);
}

export function vmConfig(vm: VmRef, diskSizes: number[]): VmConfig {
  return {
    uuid: vm.vmUuid,
    name: `vm-${vm.vmUuid.slice(0, 4)}`,
    cluster: { uuid: vm.clusterUuid, name: 'test-cluster' },
    powerState: 'ON',
    numSockets: 1,
    numVcpusPerSocket: 2,
    memorySizeMib: 2048,
    ngt: { installed: false, enabled: false, reachable: false, vssSnapshotCapable: false },
    categories: { Environment: 'test' },
    disks: diskSizes.map((sizeBytes, index) => ({ uuid: `disk-${index}-uuid`, index, busType: 'SCSI', deviceIndex: index, sizeBytes })),
    nics: [{ macAddress: '50:6b:8d:00:00:01', ipAddresses: ['10.0.0.5'] }],
  };
}

/** Reference raw images of a test VM's disks, updated by every point's writes. */
export class ReferenceDisks {
  readonly dir: string;
  readonly sizes: number[];

  constructor(dir: string, sizes: number[]) {
    this.dir = dir;
    this.sizes = sizes;
  }

  path(index: number): string {
    return join(this.dir, `reference-${index}.raw`);
  }

  async create(): Promise<void> {
    for (const [index, size] of this.sizes.entries()) await run('qemu-img', ['create', '-q', '-f', 'raw', this.path(index), String(size)]);
  }

  /** Snapshot of the current content, for comparing an older point's restore later. */
  async copy(index: number, to: string): Promise<void> {
    await run('cp', ['--sparse=always', this.path(index), to]);
  }
}

/**
 * Commits a point whose disks received `writes[i]`: a full (parentPointId null) or an overlay over the parent.
 * Checksums are computed from the pattern bytes, independently of the image.
 */
export async function commitTestPoint(
  vm: VmRef,
  parentPointId: string | null,
  writes: DiskWrite[][],
  reference: ReferenceDisks,
  now?: Date,
): Promise<RestorePoint> {
  const staged = await beginPoint(vm, { parentPointId, now });
  try {
    await staged.addResource({ kind: 'recovery-point', id: `rp-${staged.pointId}` });
    for (const [index, size] of reference.sizes.entries()) {
      const diskWrites = writes[index] ?? [];
      const image = await staged.createDiskImage(index, size, { overlay: parentPointId !== null });
      if (diskWrites.length) {
        await qemuIo(image, 'qcow2', diskWrites);
        await qemuIo(reference.path(index), 'raw', diskWrites);
      }
      const checksums: BlockChecksum[] = diskWrites
        .filter((w) => w.pattern !== undefined)
        .map((w) => ({ offset: w.offset, length: w.length, hash: xxh3Hex(Buffer.alloc(w.length, w.pattern)) }));
      const zeroRanges: ByteRange[] = diskWrites.filter((w) => w.pattern === undefined).map((w) => ({ offset: w.offset, length: w.length }));
      const transferred = checksums.reduce((sum, c) => sum + c.length, 0);
      const zero = zeroRanges.reduce((sum, z) => sum + z.length, 0);
      await staged.writeDisk({
        index,
        uuid: `disk-${index}-uuid`,
        logicalSizeBytes: size,
        stats: { logicalBytes: size, changedBytes: transferred + zero, transferredBytes: transferred, zeroBytes: zero, durationMs: 1, throughputBytesPerSec: transferred * 1000 },
        checksums,
        zeroRanges,
      });
    }
    return await staged.commit({
      type: parentPointId === null ? 'full' : 'incremental',
      typeReason: parentPointId === null ? 'first backup' : 'changed regions since the previous point',
      vm: vmConfig(vm, reference.sizes),
      consistency: { requested: 'auto', obtained: 'CRASH_CONSISTENT', reason: 'NGT not installed' },
      recoveryPoint: { id: `rp-${staged.pointId}`, generation: 'v4', disks: reference.sizes.map((_, i) => ({ diskUuid: `disk-${i}-uuid` })) },
    });
  } catch (err) {
    await staged.abort();
    throw err;
  }
}
