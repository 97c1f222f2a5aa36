/**
 * v4 response schemas written from the official Go SDK models (nutanix/ntnx-api-golang-clients: vmm
 * models/vmm/v4/ahv/config, clustermgmt models/clustermgmt/v4/config, dataprotection models/dataprotection/v4/
 * {config,common,content}, prism models/prism/v4/config, volumes models/volumes/v4/config, common/v1). Objects are
 * strict: a field the SDK does not define fails validation, so a misspelt or invented field cannot slip through.
 */
import { z } from 'zod';

const objectType = (name: string) => z.literal(name);
const reserved = z.record(z.string(), z.unknown()).optional();
const uuid = z.uuid();
const dateTime = z.iso.datetime();
const int64 = z.number().int();

const base = <S extends z.ZodRawShape>(type: string, shape: S) =>
  z.strictObject({ $objectType: objectType(type), $reserved: reserved, ...shape });

const ipv4Address = base('common.v1.config.IPv4Address', { value: z.ipv4(), prefixLength: z.number().int().optional() });
const ipAddress = base('common.v1.config.IPAddress', { ipv4: ipv4Address.optional(), ipv6: z.unknown().optional() });
const apiLink = base('common.v1.response.ApiLink', { href: z.string(), rel: z.string() });
const flag = base('common.v1.config.Flag', { name: z.string(), value: z.boolean() });
const kvPair = base('common.v1.config.KVPair', { name: z.string(), value: z.unknown() });

export const metadataSchema = base('common.v1.response.ApiResponseMetadata', {
  flags: z.array(flag).optional(),
  links: z.array(apiLink).optional(),
  messages: z.array(z.unknown()).optional(),
  extraInfo: z.array(z.unknown()).optional(),
  totalAvailableResults: z.number().int().optional(),
});

/** `{ $objectType, $reserved, data, metadata }` around `data`. */
export function apiResponse<T extends z.ZodType>(data: T) {
  return z.strictObject({ $objectType: z.string().regex(/^[a-z]+\.v4\.[a-z.]+\.[A-Za-z]+ApiResponse$/), $reserved: reserved, data, metadata: metadataSchema });
}

// ---- vmm --------------------------------------------------------------------------------------------------

const diskBusType = z.enum(['SCSI', 'IDE', 'PCI', 'SATA', 'SPAPR']);
const vmDisk = base('vmm.v4.ahv.config.VmDisk', {
  diskExtId: uuid.optional(),
  diskSizeBytes: int64.optional(),
  storageContainer: base('vmm.v4.ahv.config.VmDiskContainerReference', { extId: uuid }).optional(),
  isMigrationInProgress: z.boolean().optional(),
});
const vgReference = base('vmm.v4.ahv.config.ADSFVolumeGroupReference', { volumeGroupExtId: uuid });
const disk = base('vmm.v4.ahv.config.Disk', {
  extId: uuid,
  diskAddress: base('vmm.v4.ahv.config.DiskAddress', { busType: diskBusType, index: z.number().int() }),
  $backingInfoItemDiscriminator: z.enum(['vmm.v4.ahv.config.VmDisk', 'vmm.v4.ahv.config.ADSFVolumeGroupReference']),
  backingInfo: z.union([vmDisk, vgReference]),
});
const cdRom = base('vmm.v4.ahv.config.CdRom', {
  extId: uuid,
  diskAddress: base('vmm.v4.ahv.config.CdRomAddress', { busType: z.enum(['IDE', 'SATA']), index: z.number().int() }),
  isoType: z.enum(['OTHER', 'GUEST_TOOLS', 'GUEST_CUSTOMIZATION']).optional(),
  backingInfo: vmDisk.optional(),
});
export const guestToolsSchema = base('vmm.v4.ahv.config.GuestTools', {
  isInstalled: z.boolean(),
  isEnabled: z.boolean(),
  isReachable: z.boolean(),
  isVssSnapshotCapable: z.boolean(),
  capabilities: z.array(z.enum(['SELF_SERVICE_RESTORE', 'VSS_SNAPSHOT'])),
  isIsoInserted: z.boolean().optional(),
  version: z.string().optional(),
  availableVersion: z.string().optional(),
  guestOsVersion: z.string().optional(),
});
const nic = base('vmm.v4.ahv.config.Nic', {
  extId: uuid,
  backingInfo: base('vmm.v4.ahv.config.EmulatedNic', { macAddress: z.string(), model: z.enum(['VIRTIO', 'E1000']), isConnected: z.boolean(), numQueues: z.number().int() }),
  networkInfo: base('vmm.v4.ahv.config.NicNetworkInfo', {
    nicType: z.enum(['NORMAL_NIC', 'DIRECT_NIC', 'NETWORK_FUNCTION_NIC', 'SPAN_DESTINATION_NIC']),
    vlanMode: z.enum(['ACCESS', 'TRUNK']),
    subnet: base('vmm.v4.ahv.config.SubnetReference', { extId: uuid }),
    ipv4Config: base('vmm.v4.ahv.config.Ipv4Config', { shouldAssignIp: z.boolean(), ipAddress: ipv4Address }).optional(),
  }),
});
export const vmSchema = base('vmm.v4.ahv.config.Vm', {
  extId: uuid,
  name: z.string(),
  description: z.string().optional(),
  createTime: dateTime,
  updateTime: dateTime,
  cluster: base('vmm.v4.ahv.config.ClusterReference', { extId: uuid }),
  powerState: z.enum(['ON', 'OFF', 'PAUSED', 'UNDETERMINED']),
  numSockets: z.number().int(),
  numCoresPerSocket: z.number().int(),
  numThreadsPerCore: z.number().int(),
  memorySizeBytes: int64,
  machineType: z.enum(['PC', 'PSERIES', 'Q35']),
  biosUuid: uuid,
  generationUuid: uuid,
  hardwareClockTimezone: z.string(),
  categories: z.array(base('vmm.v4.ahv.config.CategoryReference', { extId: uuid })),
  disks: z.array(disk),
  cdRoms: z.array(cdRom),
  nics: z.array(nic),
  guestTools: guestToolsSchema,
});

// ---- clustermgmt --------------------------------------------------------------------------------------------

export const clusterSchema = base('clustermgmt.v4.config.Cluster', {
  extId: uuid,
  name: z.string(),
  config: base('clustermgmt.v4.config.ClusterConfigReference', {
    clusterFunction: z.array(z.enum(['AOS', 'PRISM_CENTRAL', 'CLOUD_DATA_GATEWAY', 'ANALYTICS_PLATFORM', 'ONE_NODE', 'TWO_NODE'])),
    buildInfo: base('clustermgmt.v4.config.BuildReference', { buildType: z.string(), version: z.string(), fullVersion: z.string(), commitId: z.string(), shortCommitId: z.string() }),
    clusterSoftwareMap: z.array(base('clustermgmt.v4.config.SoftwareMapReference', { softwareType: z.enum(['NOS', 'NCC', 'PRISM_CENTRAL']), version: z.string() })),
    hypervisorTypes: z.array(z.enum(['AHV', 'ESX', 'HYPERV', 'XEN', 'NATIVEHOST'])),
    isAvailable: z.boolean(),
    redundancyFactor: int64,
    timezone: z.string(),
    operationMode: z.enum(['NORMAL', 'READ_ONLY', 'STAND_ALONE', 'SWITCH_TO_TWO_NODE', 'OVERRIDE']),
  }),
  network: base('clustermgmt.v4.config.ClusterNetworkReference', { externalAddress: ipAddress, externalDataServiceIp: ipAddress.optional() }),
  vmCount: int64,
});

// ---- dataprotection -----------------------------------------------------------------------------------------

const recoveryPointType = z.enum(['CRASH_CONSISTENT', 'APPLICATION_CONSISTENT']);
export const vmRecoveryPointSchema = base('dataprotection.v4.config.VmRecoveryPoint', {
  extId: uuid,
  vmExtId: uuid,
  name: z.string(),
  creationTime: dateTime,
  expirationTime: dateTime.optional(),
  status: z.literal('COMPLETE'),
  recoveryPointType,
  consistencyGroupExtId: uuid,
  locationAgnosticId: uuid,
  hypervisorType: z.enum(['AHV', 'ESX']),
  vmCategories: z.array(z.string().regex(/^[^/]+\/.+$/)),
  diskRecoveryPoints: z.array(base('dataprotection.v4.common.DiskRecoveryPoint', { diskExtId: uuid, diskRecoveryPointExtId: uuid })),
});
export const recoveryPointSchema = base('dataprotection.v4.config.RecoveryPoint', {
  extId: uuid,
  name: z.string(),
  creationTime: dateTime,
  expirationTime: dateTime.optional(),
  status: z.literal('COMPLETE'),
  recoveryPointType,
  locationAgnosticId: uuid,
  locationReferences: z.array(base('dataprotection.v4.config.LocationReference', { locationExtId: uuid })),
  ownerExtId: uuid,
  vmRecoveryPoints: z.array(vmRecoveryPointSchema),
  volumeGroupRecoveryPoints: z.array(z.unknown()),
});
export const clusterInfoSchema = base('dataprotection.v4.common.ClusterInfo', { clusterIp: ipAddress, jwtToken: z.string() });
export const changedRegionSchema = base('dataprotection.v4.content.ChangedRegion', { offset: int64, length: int64, regionType: z.enum(['ZEROED', 'REGULAR']) });

// ---- prism --------------------------------------------------------------------------------------------------

export const taskReferenceSchema = base('prism.v4.config.TaskReference', { extId: z.string().regex(/^ZXJnb24=:[0-9a-f-]{36}$/) });
const appMessage = base('prism.v4.error.AppMessage', {
  code: z.string(),
  message: z.string(),
  locale: z.string(),
  severity: z.enum(['INFO', 'WARNING', 'ERROR']),
  errorGroup: z.string().optional(),
  argumentsMap: z.record(z.string(), z.string()).optional(),
});
export const taskSchema = base('prism.v4.config.Task', {
  extId: z.string().regex(/^ZXJnb24=:[0-9a-f-]{36}$/),
  operation: z.string(),
  operationDescription: z.string(),
  status: z.enum(['QUEUED', 'RUNNING', 'CANCELING', 'SUCCEEDED', 'FAILED', 'CANCELED', 'SUSPENDED']),
  progressPercentage: z.number().int().min(0).max(100),
  createdTime: dateTime,
  startedTime: dateTime.optional(),
  completedTime: dateTime.optional(),
  lastUpdatedTime: dateTime,
  entitiesAffected: z.array(base('prism.v4.config.EntityReference', { extId: z.string(), rel: z.string(), name: z.string().optional() })),
  completionDetails: z.array(kvPair),
  errorMessages: z.array(appMessage),
  legacyErrorMessage: z.string().optional(),
  clusterExtIds: z.array(z.string()),
  isCancelable: z.boolean(),
  isBackgroundTask: z.boolean(),
  numberOfSubtasks: z.number().int(),
  numberOfEntitiesAffected: z.number().int(),
  ownedBy: base('prism.v4.config.OwnerReference', { extId: uuid, name: z.string() }),
  subSteps: z.array(z.unknown()),
  subTasks: z.array(z.unknown()),
  warnings: z.array(appMessage),
});

// ---- volumes ------------------------------------------------------------------------------------------------

export const volumeGroupSchema = base('volumes.v4.config.VolumeGroup', {
  extId: uuid,
  name: z.string(),
  targetName: z.string(),
  targetPrefix: z.string().optional(),
  sharingStatus: z.enum(['SHARED', 'NOT_SHARED']),
  usageType: z.enum(['USER', 'INTERNAL', 'TEMPORARY', 'BACKUP_TARGET']),
  isHidden: z.boolean(),
  protocol: z.enum(['NOT_ASSIGNED', 'ISCSI', 'NVMF']),
  clusterReference: uuid,
  createdBy: z.string(),
});
export const volumeDiskSchema = base('volumes.v4.config.VolumeDisk', {
  extId: uuid,
  index: z.number().int(),
  diskSizeBytes: int64,
  description: z.string().optional(),
  diskDataSourceReference: base('common.v1.config.EntityReference', { entityType: z.literal('DISK_RECOVERY_POINT'), extId: uuid }),
});

export const iscsiClientSchema = base('volumes.v4.config.IscsiClient', {
  extId: uuid,
  iscsiInitiatorName: z.string(),
  enabledAuthentications: z.enum(['CHAP', 'NONE']),
  clusterReference: uuid,
  attachedTargets: z.array(base('volumes.v4.config.TargetParam', { iscsiTargetName: z.string(), numVirtualTargets: z.number().int() })),
});

// ---- errors -------------------------------------------------------------------------------------------------

/** The v4 ErrorResponse as recorded from a real PC (vmm 404), for any namespace. */
export function errorResponseSchema(ns: string) {
  return z.strictObject({
    $dataItemDiscriminator: z.literal(`${ns}.v4.error.ErrorResponse`),
    data: z.strictObject({
      $errorItemDiscriminator: z.literal(`List<${ns}.v4.error.AppMessage>`),
      $objectType: z.literal(`${ns}.v4.error.ErrorResponse`),
      error: z
        .array(
          z.strictObject({
            $objectType: z.literal(`${ns}.v4.error.AppMessage`),
            argumentsMap: z.record(z.string(), z.string()),
            code: z.string(),
            errorGroup: z.string(),
            locale: z.literal('en-US'),
            message: z.string(),
            severity: z.enum(['INFO', 'WARNING', 'ERROR']),
          }),
        )
        .min(1),
    }),
  });
}
