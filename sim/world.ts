/**
 * Operations on the simulated world shared by the v3, v4 and admin APIs: lazy disk creation, guest writes,
 * snapshots (freeze), snapshot deletion, and debounced persistence of state.json.
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  applyGuestWrites,
  BlockMap,
  createDiskFile,
  freezeDisk,
  growDiskFile,
  unshareLiveDisk,
  type WrittenBlock,
} from './disk.ts';
import {
  disksInIndexOrder,
  liveDiskPath,
  saveState,
  snapshotDiskPath,
  type SimDisk,
  type SimState,
  type SimVm,
  type Snapshot,
  type SnapshotDisk,
} from './state.ts';

export class WorldError extends Error {
  readonly status: number;

  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

export class World {
  readonly dataDir: string;
  readonly state: SimState;
  private readonly maps = new Map<string, BlockMap>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private saving: Promise<void> | undefined;
  private dirty = false;
  /** Deleted snapshots' files being freed (awaited by flush). */
  private readonly reclaiming = new Set<Promise<void>>();

  constructor(dataDir: string, state: SimState) {
    this.dataDir = dataDir;
    this.state = state;
  }

  vmByUuid(uuid: string): SimVm | undefined {
    return this.state.vms.find((v) => v.uuid === uuid);
  }

  vmByName(name: string): SimVm | undefined {
    return this.state.vms.find((v) => v.name === name);
  }

  diskByIndex(vm: SimVm, index: number): SimDisk {
    const disk = disksInIndexOrder(vm)[index];
    if (!disk) throw new WorldError(404, `VM ${vm.name} has no disk ${index} (it has ${vm.disks.length})`);
    return disk;
  }

  /** Serialises operations on one disk (writes vs. snapshot copies). */
  private withLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(key) ?? Promise.resolve();
    const run = previous.then(fn, fn);
    this.locks.set(key, run.catch(() => undefined));
    return run;
  }

  private async mapFor(path: string): Promise<BlockMap> {
    let map = this.maps.get(path);
    if (!map) {
      map = await BlockMap.load(`${path}.map`);
      this.maps.set(path, map);
    }
    return map;
  }

  /** The live disk file, created with its initial content on first use. */
  async ensureDisk(vm: SimVm, disk: SimDisk): Promise<string> {
    const path = liveDiskPath(this.dataDir, vm.uuid, disk.uuid);
    return this.withLock(disk.uuid, async () => {
      if (existsSync(path) && existsSync(`${path}.map`)) return path;
      const map = await createDiskFile(path, disk.sizeBytes, `${this.state.seed}/${vm.uuid}/${disk.uuid}`);
      await map.save(`${path}.map`);
      this.maps.set(path, map);
      return path;
    });
  }

  async writeDisk(vm: SimVm, index: number, changedPercent: number, seed?: number): Promise<{ generation: number; blocks: WrittenBlock[] }> {
    const disk = this.diskByIndex(vm, index);
    const path = await this.ensureDisk(vm, disk);
    return this.withLock(disk.uuid, async () => {
      const map = await this.mapFor(path);
      await unshareLiveDisk(path);
      const generation = disk.generation + 1;
      const seedText = `${seed ?? this.state.seed}/${vm.uuid}/${disk.uuid}`;
      const blocks = await applyGuestWrites(path, map, disk.sizeBytes, generation, changedPercent, seedText);
      await map.save(`${path}.map`);
      disk.generation = generation;
      this.changed();
      return { generation, blocks };
    });
  }

  async resizeDisk(vm: SimVm, index: number, sizeBytes: number): Promise<void> {
    const disk = this.diskByIndex(vm, index);
    if (sizeBytes < disk.sizeBytes) throw new WorldError(400, `disk ${index} of ${vm.name} is ${disk.sizeBytes} bytes; disks only grow`);
    const path = await this.ensureDisk(vm, disk);
    await this.withLock(disk.uuid, async () => {
      const map = await this.mapFor(path);
      await unshareLiveDisk(path);
      await growDiskFile(path, map, sizeBytes);
      await map.save(`${path}.map`);
      disk.sizeBytes = sizeBytes;
      vm.specVersion += 1;
      this.changed();
    });
  }

  /** Freezes every real disk of the VM into DIR/snapshots/<snapshotUuid>/. */
  async freezeVm(snapshotUuid: string, vm: SimVm): Promise<SnapshotDisk[]> {
    const frozen: SnapshotDisk[] = [];
    for (const disk of disksInIndexOrder(vm)) {
      const livePath = await this.ensureDisk(vm, disk);
      const path = snapshotDiskPath(this.dataDir, snapshotUuid, disk.uuid);
      await this.withLock(disk.uuid, async () => {
        const map = await freezeDisk(livePath, await this.mapFor(livePath), path);
        this.maps.set(path, map);
      });
      frozen.push({ diskUuid: disk.uuid, diskRecoveryPointUuid: randomUUID(), livePath, path, sizeBytes: disk.sizeBytes });
    }
    return frozen;
  }

  /** Block map of a frozen snapshot file, or undefined when the file is gone. */
  async snapshotMap(path: string): Promise<BlockMap | undefined> {
    if (!existsSync(path) || !existsSync(`${path}.map`)) return undefined;
    return this.mapFor(path);
  }

  snapshotDiskByPath(path: string): { snapshot: Snapshot; disk: SnapshotDisk } | undefined {
    for (const snapshot of this.state.snapshots) {
      for (const part of snapshot.vms) {
        const disk = part.disks.find((d) => d.path === path);
        if (disk) return { snapshot, disk };
      }
    }
    return undefined;
  }

  diskRecoveryPoint(uuid: string): { snapshot: Snapshot; disk: SnapshotDisk } | undefined {
    for (const snapshot of this.state.snapshots) {
      for (const part of snapshot.vms) {
        const disk = part.disks.find((d) => d.diskRecoveryPointUuid === uuid);
        if (disk) return { snapshot, disk };
      }
    }
    return undefined;
  }

  /**
   * The snapshot is gone at once; its files are renamed aside and freed in the background, as Nutanix reclaims a
   * deleted recovery point's space later (Curator) instead of in the delete task. Freeing the last link of a
   * large file takes the file system a while, which a real delete task does not wait for either.
   */
  async deleteSnapshot(snapshot: Snapshot): Promise<void> {
    this.state.snapshots = this.state.snapshots.filter((s) => s !== snapshot);
    for (const part of snapshot.vms) {
      for (const disk of part.disks) this.maps.delete(disk.path);
    }
    const dir = dirname(snapshotDiskPath(this.dataDir, snapshot.uuid, 'x'));
    const doomed = join(dirname(dir), `.reclaim-${randomUUID()}`);
    try {
      await rename(dir, doomed);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      this.changed();
      return;
    }
    const reclaim = rm(doomed, { recursive: true, force: true }).finally(() => this.reclaiming.delete(reclaim));
    this.reclaiming.add(reclaim);
    this.changed();
  }

  /** Marks state dirty; a single writer flushes it (coalescing bursts of changes). */
  changed(): void {
    this.dirty = true;
    if (this.saving) return;
    this.saving = (async () => {
      while (this.dirty) {
        this.dirty = false;
        await saveState(this.dataDir, this.state);
      }
      this.saving = undefined;
    })();
  }

  async flush(): Promise<void> {
    await Promise.allSettled(this.reclaiming);
    while (this.saving) await this.saving;
  }
}
