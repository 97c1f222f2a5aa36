/**
 * The simulator's persistent world: clusters, VMs, disks, snapshots/recovery points, volume groups, tasks and
 * idempotency records, kept in DIR/state.json (the schemas below double as the parser for that file).
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { Prng } from './disk.ts';

export const NgtMode = { Succeed: 'succeed', Refuse: 'refuse', Downgrade: 'downgrade' } as const;
export type NgtMode = (typeof NgtMode)[keyof typeof NgtMode];

export const ngtSchema = z.object({
  installed: z.boolean(),
  enabled: z.boolean(),
  reachable: z.boolean(),
  vssCapable: z.boolean(),
  /** What an APPLICATION_CONSISTENT request produces for this VM. */
  mode: z.enum([NgtMode.Succeed, NgtMode.Refuse, NgtMode.Downgrade]),
});
export type Ngt = z.infer<typeof ngtSchema>;

const diskSchema = z.object({
  uuid: z.string(),
  busType: z.string(),
  deviceIndex: z.number().int(),
  sizeBytes: z.number().int().positive(),
  /** Last guest-write generation applied (1 = initial content). */
  generation: z.number().int(),
  containerUuid: z.string(),
});
export type SimDisk = z.infer<typeof diskSchema>;

const vmSchema = z.object({
  uuid: z.string(),
  name: z.string(),
  index: z.number().int(),
  clusterUuid: z.string(),
  powerState: z.enum(['ON', 'OFF']),
  disks: z.array(diskSchema),
  /** Order of `disks` in the API's disk_list (shuffled on some VMs so clients must sort). */
  diskListOrder: z.array(z.number().int()),
  cdrom: z.object({ uuid: z.string() }).optional(),
  volumeGroupDevice: z.object({ uuid: z.string(), volumeGroupUuid: z.string(), deviceIndex: z.number().int() }).optional(),
  nics: z.array(z.object({ uuid: z.string(), mac: z.string(), ip: z.string(), subnetUuid: z.string() })),
  ngt: ngtSchema,
  categories: z.record(z.string(), z.string()),
  specVersion: z.number().int(),
  createdAt: z.string(),
  biosUuid: z.string(),
});
export type SimVm = z.infer<typeof vmSchema>;

const clusterSchema = z.object({
  uuid: z.string(),
  name: z.string(),
  isPrismCentral: z.boolean(),
  version: z.string(),
  containerUuid: z.string(),
});
export type SimCluster = z.infer<typeof clusterSchema>;

export const Consistency = { Crash: 'CRASH_CONSISTENT', Application: 'APPLICATION_CONSISTENT' } as const;
export type Consistency = (typeof Consistency)[keyof typeof Consistency];

const snapshotDiskSchema = z.object({
  diskUuid: z.string(),
  diskRecoveryPointUuid: z.string(),
  livePath: z.string(),
  path: z.string(),
  sizeBytes: z.number().int(),
});
export type SnapshotDisk = z.infer<typeof snapshotDiskSchema>;

const vmSnapshotSchema = z.object({
  vmUuid: z.string(),
  vmRecoveryPointUuid: z.string(),
  type: z.enum([Consistency.Crash, Consistency.Application]),
  disks: z.array(snapshotDiskSchema),
});
export type VmSnapshotPart = z.infer<typeof vmSnapshotSchema>;

/** A v3 vm_snapshot or a v4 recovery point (one VM for v3, one or more for v4). */
const snapshotSchema = z.object({
  uuid: z.string(),
  api: z.enum(['v3', 'v4']),
  name: z.string(),
  requestedType: z.enum([Consistency.Crash, Consistency.Application]),
  state: z.enum(['PENDING', 'COMPLETE', 'ERROR']),
  errorMessage: z.string().optional(),
  createdAt: z.string(),
  expirationTime: z.string().optional(),
  taskUuid: z.string(),
  requestedVmUuids: z.array(z.string()),
  vms: z.array(vmSnapshotSchema),
  specVersion: z.number().int(),
});
export type Snapshot = z.infer<typeof snapshotSchema>;

const volumeGroupSchema = z.object({
  uuid: z.string(),
  name: z.string(),
  createdAt: z.string(),
  disks: z.array(z.object({ uuid: z.string(), index: z.number().int(), diskRecoveryPointUuid: z.string(), path: z.string(), sizeBytes: z.number().int() })),
  initiators: z.array(z.string()),
  specVersion: z.number().int(),
});
export type VolumeGroup = z.infer<typeof volumeGroupSchema>;

export const TaskStatus = {
  Queued: 'QUEUED',
  Running: 'RUNNING',
  Succeeded: 'SUCCEEDED',
  Failed: 'FAILED',
  Canceled: 'CANCELED',
} as const;
export type TaskStatus = (typeof TaskStatus)[keyof typeof TaskStatus];

const taskSchema = z.object({
  uuid: z.string(),
  operation: z.string(),
  status: z.enum([TaskStatus.Queued, TaskStatus.Running, TaskStatus.Succeeded, TaskStatus.Failed, TaskStatus.Canceled]),
  progress: z.number().int(),
  createdAt: z.string(),
  startedAt: z.string().optional(),
  completedAt: z.string().optional(),
  updatedAt: z.string(),
  logicalTimestamp: z.number().int(),
  clusterUuid: z.string(),
  entities: z.array(z.object({ extId: z.string(), rel: z.string(), kind: z.string(), name: z.string().optional() })),
  completionDetails: z.array(z.object({ name: z.string(), value: z.string() })),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type Task = z.infer<typeof taskSchema>;

export const stateSchema = z.object({
  version: z.literal(1),
  seed: z.number().int(),
  clusters: z.array(clusterSchema),
  vms: z.array(vmSchema),
  snapshots: z.array(snapshotSchema),
  volumeGroups: z.array(volumeGroupSchema),
  tasks: z.array(taskSchema),
  idempotenceIdentifiers: z.record(
    z.string(),
    z.object({ count: z.number().int(), expirationTime: z.string(), uuidList: z.array(z.string()) }),
  ),
  /** NTNX-Request-Id → task uuid: a replayed POST returns the same task and creates nothing. */
  requestIds: z.record(z.string(), z.string()),
});
export type SimState = z.infer<typeof stateSchema>;

export interface InventoryOptions {
  vms: number;
  disksPerVm: number;
  diskSizeBytes: number;
  seed: number;
  clusters: number;
}

export const pcVersion = { v4: 'pc.2024.3.0.1', v3: 'pc.2022.6' } as const;
const aosVersion = '6.8.1';

/** Deterministic inventory for a seed: same flags, same uuids, names, NGT states and disk layouts. */
export function generateInventory(options: InventoryOptions): SimState {
  const prng = new Prng(`inventory/${options.seed}`);
  const created = new Date(Date.UTC(2025, 0, 15, 9, 30, 0)).toISOString().replace('.000Z', 'Z');
  const clusters: SimCluster[] = [
    { uuid: prng.uuid(), name: 'prism-central', isPrismCentral: true, version: '2024.3', containerUuid: prng.uuid() },
  ];
  for (let i = 1; i <= options.clusters; i++) {
    clusters.push({ uuid: prng.uuid(), name: `cluster-${i}`, isPrismCentral: false, version: aosVersion, containerUuid: prng.uuid() });
  }
  const aos = clusters.filter((c) => !c.isPrismCentral);
  const subnetUuid = prng.uuid();
  const width = Math.max(4, String(options.vms).length);
  const vms: SimVm[] = [];
  for (let i = 1; i <= options.vms; i++) {
    const cluster = aos[(i - 1) % aos.length] as SimCluster;
    const disks: SimDisk[] = [];
    for (let d = 0; d < options.disksPerVm; d++) {
      // Some disks end off a 64 KiB boundary: the last disk of multi-disk VMs, the disk of even single-disk VMs.
      const last = d === options.disksPerVm - 1;
      const unalignedTail = last && (options.disksPerVm >= 2 || i % 2 === 0) && options.diskSizeBytes > 1024 * 1024;
      disks.push({
        uuid: prng.uuid(),
        busType: 'SCSI',
        deviceIndex: d,
        sizeBytes: unalignedTail ? options.diskSizeBytes - 1536 : options.diskSizeBytes,
        generation: 1,
        containerUuid: cluster.containerUuid,
      });
    }
    const order = disks.map((_, d) => d);
    if (i % 2 === 0) order.reverse();
    const mode = i % 4 === 1 ? NgtMode.Downgrade : i % 4 === 3 ? NgtMode.Refuse : NgtMode.Succeed;
    const vmUuid = prng.uuid();
    vms.push({
      uuid: vmUuid,
      name: `vm-${String(i).padStart(width, '0')}`,
      index: i,
      clusterUuid: cluster.uuid,
      powerState: i % 7 === 0 ? 'OFF' : 'ON',
      disks,
      diskListOrder: order,
      cdrom: i % 3 === 0 ? { uuid: prng.uuid() } : undefined,
      volumeGroupDevice: i % 5 === 0 ? { uuid: prng.uuid(), volumeGroupUuid: prng.uuid(), deviceIndex: 10 } : undefined,
      nics: [
        {
          uuid: prng.uuid(),
          mac: `50:6b:8d:${[0, 0, 0].map(() => prng.int(256).toString(16).padStart(2, '0')).join(':')}`,
          ip: `10.20.${Math.floor(i / 250) % 256}.${(i % 250) + 2}`,
          subnetUuid,
        },
      ],
      ngt: {
        installed: i % 4 !== 1,
        enabled: i % 4 !== 1,
        reachable: i % 4 !== 1 && i % 4 !== 3,
        vssCapable: i % 4 !== 1,
        mode,
      },
      categories: { Environment: i % 2 === 0 ? 'Dev' : 'Production', AppType: i % 3 === 0 ? 'db' : 'web' },
      specVersion: 0,
      createdAt: created,
      biosUuid: vmUuid,
    });
  }
  return {
    version: 1,
    seed: options.seed,
    clusters,
    vms,
    snapshots: [],
    volumeGroups: [],
    tasks: [],
    idempotenceIdentifiers: {},
    requestIds: {},
  };
}

export function statePath(dataDir: string): string {
  return join(dataDir, 'state.json');
}

export function liveDiskPath(dataDir: string, vmUuid: string, diskUuid: string): string {
  return join(dataDir, 'disks', vmUuid, diskUuid);
}

export function snapshotDiskPath(dataDir: string, snapshotUuid: string, diskUuid: string): string {
  return join(dataDir, 'snapshots', snapshotUuid, diskUuid);
}

export async function loadState(dataDir: string): Promise<SimState | undefined> {
  let text: string;
  try {
    text = await readFile(statePath(dataDir), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return stateSchema.parse(JSON.parse(text));
}

/** Atomic write (temp file + rename) so a crash never leaves half a state file. */
export async function saveState(dataDir: string, state: SimState): Promise<void> {
  await mkdir(dataDir, { recursive: true });
  const tmp = `${statePath(dataDir)}.${randomUUID()}.tmp`;
  await writeFile(tmp, JSON.stringify(state));
  await rename(tmp, statePath(dataDir));
}

const busOrder = ['SCSI', 'PCI', 'SATA', 'IDE', 'SPAPR'];

/** Real disks in index order: by bus (SCSI, PCI, SATA, IDE, SPAPR) then device index. */
export function disksInIndexOrder(vm: SimVm): SimDisk[] {
  return [...vm.disks].sort(
    (a, b) => busOrder.indexOf(a.busType) - busOrder.indexOf(b.busType) || a.deviceIndex - b.deviceIndex,
  );
}
