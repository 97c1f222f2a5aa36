/**
 * The Prism client's public surface: what the backup engine and the controllers rely on. It hides whether a
 * call went to v4 (preferred) or v3; implementations live beside this file.
 */
import type { Region } from '../mover/types.ts';

export const ApiGeneration = { V3: 'v3', V4: 'v4' } as const;
export type ApiGeneration = (typeof ApiGeneration)[keyof typeof ApiGeneration];

export const Consistency = { Application: 'APPLICATION_CONSISTENT', Crash: 'CRASH_CONSISTENT' } as const;
export type Consistency = (typeof Consistency)[keyof typeof Consistency];

export interface PrismConnection {
  /** https://host:9440 */
  endpoint: string;
  username: string;
  password: string;
  /** PEM bundle trusted in addition to (not instead of) nothing: when set, only these CAs are trusted. */
  caPem?: string;
  insecureSkipTlsVerify?: boolean;
  /** Requests per second this client may send (NutanixCluster spec.concurrency.prismRequestsPerSecond). */
  requestsPerSecond?: number;
}

export interface ClusterInfo {
  uuid: string;
  name: string;
  isPrismCentral: boolean;
  /** NOS (AOS) version, or the PC version for the Prism Central entry. */
  version?: string;
  /** iSCSI data services IP (port 3260) for volume-group exports. */
  dataServicesIp?: string;
}

export interface PrismCapabilities {
  pcVersion?: string;
  apiGenerations: ApiGeneration[];
  /** The generation the client uses for everything it can. */
  preferred: ApiGeneration;
  changedRegionTracking: boolean;
  clusters: ClusterInfo[];
}

export interface NgtStatus {
  installed: boolean;
  enabled: boolean;
  reachable: boolean;
  vssSnapshotCapable: boolean;
  version?: string;
}

export interface VmDisk {
  uuid: string;
  /** Position among the VM's real disks (CD-ROMs and volume-group attachments excluded), stable by bus + index. */
  index: number;
  busType: string;
  deviceIndex: number;
  sizeBytes: number;
  container?: { uuid?: string; name?: string };
}

export interface VmNic {
  uuid?: string;
  macAddress?: string;
  subnet?: { uuid?: string; name?: string };
  ipAddresses: string[];
}

export interface Vm {
  uuid: string;
  name: string;
  cluster: { uuid: string; name?: string };
  powerState: string;
  numSockets?: number;
  numVcpusPerSocket?: number;
  memorySizeMib?: number;
  ngt: NgtStatus;
  categories: Record<string, string>;
  disks: VmDisk[];
  nics: VmNic[];
}

export interface DiskRecoveryPoint {
  diskUuid: string;
  /** v4 disk recovery point extId. */
  diskRecoveryPointId?: string;
  /** v3 snapshot file (`status.snapshot_file_list[].snapshot_file_path`). */
  snapshotFilePath?: string;
}

export interface RecoveryPoint {
  /** v4 recovery point extId, or v3 vm_snapshot uuid. */
  id: string;
  generation: ApiGeneration;
  name: string;
  vmUuid: string;
  /** v4 VM recovery point extId. */
  vmRecoveryPointId?: string;
  /** v4: the cluster holding the recovery point (`locationReferences[0].locationExtId`); exports happen there. */
  clusterUuid?: string;
  /** The consistency Nutanix actually produced (read back, never assumed). */
  consistency: Consistency;
  createdAt?: string;
  disks: DiskRecoveryPoint[];
}

export type DiskExport =
  | { kind: 'iscsi'; url: string; release(signal?: AbortSignal): Promise<void> }
  | { kind: 'file'; path: string; release(signal?: AbortSignal): Promise<void> };

/** An empty export volume group made ahead of the recovery point (v4), for exportDisk to fill with one disk. */
export interface PreparedExport {
  volumeGroupId: string;
  clusterUuid: string;
  /** The iSCSI target name it was created with. */
  targetName: string;
  /** The iSCSI initiator already attached to it. */
  initiatorName: string;
}

export interface ChangedRegionsRequest {
  recoveryPoint: RecoveryPoint;
  disk: DiskRecoveryPoint;
  /** Absent: all allocated regions of the disk (a full backup's plan). */
  reference?: { recoveryPoint: RecoveryPoint; disk: DiskRecoveryPoint };
  offset?: number;
  length?: number;
  blockSize?: number;
  signal?: AbortSignal;
}

export interface CreateRecoveryPointRequest {
  vm: Vm;
  name: string;
  consistency: Consistency;
  /** Idempotency key: the same key never creates two recovery points. */
  requestId: string;
  /**
   * The key was made for this call and never sent before: no earlier attempt can have created anything under it,
   * so v3 skips looking for one (two GETs). Leave it unset for a key that may be reused (e.g. after a restart).
   */
  firstUse?: boolean;
  expiresAt?: Date;
  signal?: AbortSignal;
}

export interface ExportDiskRequest {
  recoveryPoint: RecoveryPoint;
  disk: DiskRecoveryPoint;
  initiatorName: string;
  /** Marks the export (v4: part of the volume group's name) so releaseExportVolumeGroups finds it after a crash. */
  exportTag?: string;
  /** A volume group from prepareExport to use (v4). */
  prepared?: PreparedExport;
  signal?: AbortSignal;
}

export interface PrismClient {
  capabilities(signal?: AbortSignal): Promise<PrismCapabilities>;
  /** Every VM (paging through all of them), or those named exactly `name`. */
  listVms(options?: { name?: string; signal?: AbortSignal }): Promise<Vm[]>;
  getVm(uuid: string, signal?: AbortSignal): Promise<Vm>;
  /** By UUID or exact name; an ambiguous name is an InvalidInput error listing the UUIDs. */
  findVm(nameOrUuid: string, signal?: AbortSignal): Promise<Vm>;
  createRecoveryPoint(request: CreateRecoveryPointRequest): Promise<RecoveryPoint>;
  getRecoveryPoint(id: string, signal?: AbortSignal): Promise<RecoveryPoint | undefined>;
  listRecoveryPoints(options: { vmUuid: string; signal?: AbortSignal }): Promise<RecoveryPoint[]>;
  /** Idempotent: a recovery point that is already gone counts as deleted. */
  deleteRecoveryPoint(id: string, signal?: AbortSignal): Promise<void>;
  /** Pages to the end; regions come in ascending offset order. */
  changedRegions(request: ChangedRegionsRequest): AsyncIterable<Region>;
  /**
   * v4: creates an empty export volume group on `clusterUuid`, named with `exportTag`, and attaches `initiatorName`,
   * while the recovery point is still being made, so that exportDisk only has to add the disk; v3: nothing to
   * prepare (undefined). exportDisk takes the group over (and deletes it if the recovery point lies on another
   * cluster); a group never handed to exportDisk is deleted by releaseExportVolumeGroups(exportTag).
   */
  prepareExport(request: { clusterUuid: string; initiatorName: string; exportTag?: string; signal?: AbortSignal }): Promise<PreparedExport | undefined>;
  /** Makes a disk recovery point readable: an iSCSI LUN through a volume group (v4) or the snapshot file (v3). */
  exportDisk(request: ExportDiskRequest): Promise<DiskExport>;
  /**
   * Deletes the export volume groups carrying `exportTag` that a killed exporter left behind, detaching their iSCSI
   * clients first; the ids deleted. v3 exports are snapshot files: nothing to release.
   */
  releaseExportVolumeGroups(exportTag: string, signal?: AbortSignal): Promise<string[]>;
  close(): Promise<void>;
}
