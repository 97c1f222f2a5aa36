/**
 * zod schemas for every Prism body the client reads or sends. Only the fields the client uses are declared;
 * unknown fields pass through untouched (real Prism adds fields every release). Field names follow the
 * published v3 swagger (../shared/specs) and the v4 Go SDK JSON tags (nutanix/ntnx-api-golang-clients).
 */
import { z } from 'zod';

const reference = z.object({ kind: z.string().nullish(), uuid: z.string(), name: z.string().nullish() });

// ---------- v3 ----------

export const v3ErrorBodySchema = z.object({
  state: z.string().nullish(),
  code: z.number().nullish(),
  message_list: z.array(z.object({ reason: z.string().nullish(), message: z.string().nullish() })),
});

/** `execution_context.task_uuid` is a string in create responses and an array of strings in GETs (fixtures). */
const executionContext = z.object({
  task_uuid: z.union([z.string(), z.array(z.string())]).nullish(),
});

const v3DiskSchema = z.object({
  uuid: z.string().nullish(),
  disk_size_bytes: z.number().nullish(),
  disk_size_mib: z.number().nullish(),
  device_properties: z
    .object({
      device_type: z.string().nullish(),
      disk_address: z.object({ adapter_type: z.string(), device_index: z.number() }).nullish(),
    })
    .nullish(),
  storage_config: z.object({ storage_container_reference: reference.partial({ uuid: true }).nullish() }).nullish(),
  volume_group_reference: reference.nullish(),
});

const v3NicSchema = z.object({
  uuid: z.string().nullish(),
  mac_address: z.string().nullish(),
  subnet_reference: reference.partial({ uuid: true }).nullish(),
  ip_endpoint_list: z.array(z.object({ ip: z.string().nullish() })).nullish(),
});

const v3VmResources = z.object({
  power_state: z.string().nullish(),
  num_sockets: z.number().nullish(),
  num_vcpus_per_socket: z.number().nullish(),
  memory_size_mib: z.number().nullish(),
  disk_list: z.array(v3DiskSchema).nullish(),
  nic_list: z.array(v3NicSchema).nullish(),
  guest_tools: z
    .object({
      nutanix_guest_tools: z
        .object({
          ngt_state: z.string().nullish(),
          state: z.string().nullish(),
          is_reachable: z.boolean().nullish(),
          vss_snapshot_capable: z.boolean().nullish(),
          enabled_capability_list: z.array(z.string()).nullish(),
          version: z.string().nullish(),
        })
        .nullish(),
    })
    .nullish(),
});

const v3Metadata = z.object({
  kind: z.string().nullish(),
  uuid: z.string(),
  categories: z.record(z.string(), z.string()).nullish(),
  creation_time: z.string().nullish(),
  spec_version: z.number().nullish(),
});

export const v3VmSchema = z.object({
  metadata: v3Metadata,
  spec: z
    .object({ name: z.string().nullish(), resources: v3VmResources.nullish(), cluster_reference: reference.nullish() })
    .nullish(),
  status: z
    .object({
      name: z.string().nullish(),
      state: z.string().nullish(),
      resources: v3VmResources.nullish(),
      cluster_reference: reference.nullish(),
      execution_context: executionContext.nullish(),
    })
    .nullish(),
});
export type V3Vm = z.infer<typeof v3VmSchema>;

const v3ListMetadataSchema = z.object({
  kind: z.string().nullish(),
  total_matches: z.number().nullish(),
  length: z.number().nullish(),
  offset: z.number().nullish(),
});

export const v3VmListSchema = z.object({
  metadata: v3ListMetadataSchema,
  entities: z.array(v3VmSchema).nullish(),
});

/** Request body of `POST vms/list`, `clusters/list`, `vm_snapshots/list` (swagger `*_list_metadata`). */
export const v3ListRequestSchema = z.object({
  kind: z.string().optional(),
  filter: z.string().optional(),
  offset: z.number().int().min(0).optional(),
  length: z.number().int().min(1).optional(),
  sort_attribute: z.string().optional(),
  sort_order: z.enum(['ASCENDING', 'DESCENDING']).optional(),
});
export type V3ListRequest = z.infer<typeof v3ListRequestSchema>;

export const v3ClusterSchema = z.object({
  metadata: v3Metadata,
  spec: z.object({ name: z.string().nullish() }).nullish(),
  status: z
    .object({
      name: z.string().nullish(),
      resources: z
        .object({
          config: z
            .object({
              service_list: z.array(z.string()).nullish(),
              software_map: z.record(z.string(), z.object({ software_type: z.string().nullish(), version: z.string().nullish() })).nullish(),
              build: z.object({ version: z.string().nullish() }).nullish(),
            })
            .nullish(),
          network: z.object({ external_ip: z.string().nullish(), external_data_services_ip: z.string().nullish() }).nullish(),
        })
        .nullish(),
    })
    .nullish(),
});

export const v3ClusterListSchema = z.object({
  metadata: v3ListMetadataSchema,
  entities: z.array(v3ClusterSchema).nullish(),
});

/** `GET prism_central` (recorded: `resources.version` "pc.2024.1.0.1"). */
export const v3PrismCentralSchema = z.object({
  resources: z.object({ version: z.string().nullish(), cluster_uuid: z.string().nullish() }).nullish(),
});

export const v3TaskSchema = z.object({
  uuid: z.string().nullish(),
  status: z.string(),
  percentage_complete: z.number().nullish(),
  progress_message: z.string().nullish(),
  error_code: z.string().nullish(),
  error_detail: z.string().nullish(),
  entity_reference_list: z.array(reference).nullish(),
});
export type V3Task = z.infer<typeof v3TaskSchema>;

/** `POST tasks/poll`: waits up to poll_timeout_seconds (0-30) for the tasks to end. */
export const v3TaskPollRequestSchema = z.object({
  task_uuid_list: z.array(z.string()).min(1),
  poll_timeout_seconds: z.number().int().min(0).max(30),
});

export const v3TaskPollResponseSchema = z.object({
  entities: z.array(v3TaskSchema).nullish(),
  has_poll_timed_out: z.boolean().nullish(),
});

export const v3IdempotenceIdentifiersSchema = z.object({
  client_identifier: z.string().nullish(),
  count: z.number().nullish(),
  uuid_list: z.array(z.string()).min(1),
});

export const v3IdempotenceRequestSchema = z.object({
  client_identifier: z.string(),
  count: z.number().int().min(1),
  valid_duration_in_minutes: z.number().int().min(1).optional(),
});

const v3SnapshotTypeSchema = z.enum(['CRASH_CONSISTENT', 'APPLICATION_CONSISTENT']);

/** PE v3 `vm_snapshot_intent_input`. */
export const v3SnapshotCreateRequestSchema = z.object({
  api_version: z.string(),
  metadata: z.object({ kind: z.literal('vm_snapshot'), uuid: z.string() }),
  spec: z.object({
    name: z.string().max(64),
    snapshot_type: v3SnapshotTypeSchema,
    expiration_time_msecs: z.number().int().optional(),
    resources: z.object({ entity_uuid: z.string() }),
  }),
});

export const v3SnapshotSchema = z.object({
  metadata: v3Metadata,
  spec: z
    .object({
      name: z.string().nullish(),
      snapshot_type: v3SnapshotTypeSchema.nullish(),
      resources: z.object({ entity_uuid: z.string().nullish() }).nullish(),
    })
    .nullish(),
  status: z
    .object({
      name: z.string().nullish(),
      state: z.string().nullish(),
      snapshot_type: v3SnapshotTypeSchema.nullish(),
      resources: z.object({ entity_uuid: z.string().nullish() }).nullish(),
      snapshot_file_list: z.array(z.object({ file_path: z.string().nullish(), snapshot_file_path: z.string() })).nullish(),
      message_list: z.array(z.object({ message: z.string().nullish(), reason: z.string().nullish() })).nullish(),
      execution_context: executionContext.nullish(),
    })
    .nullish(),
});
export type V3Snapshot = z.infer<typeof v3SnapshotSchema>;

export const v3SnapshotListSchema = z.object({
  metadata: v3ListMetadataSchema,
  entities: z.array(v3SnapshotSchema).nullish(),
});

/** DELETE answers 202 with a task reference in `status.execution_context` (or nothing). */
export const v3DeleteResponseSchema = z
  .object({ status: z.object({ execution_context: executionContext.nullish() }).nullish() })
  .nullish();

export const v3ChangedRegionsRequestSchema = z.object({
  snapshot_file_path: z.string(),
  reference_snapshot_file_path: z.string().optional(),
  start_offset: z.number().int().min(0).optional(),
  end_offset: z.number().int().min(0).optional(),
});

const regionTypeSchema = z.enum(['REGULAR', 'ZEROED']);

export const v3ChangedRegionsSchema = z.object({
  region_list: z.array(z.object({ offset: z.number(), length: z.number(), type: regionTypeSchema })).nullish(),
  next_offset: z.number().nullish(),
  file_size: z.number().nullish(),
});

// ---------- v4 ----------

export const v4ErrorBodySchema = z.object({
  data: z.object({
    error: z.union([
      z.array(z.object({ code: z.string().nullish(), message: z.string().nullish() })),
      z.object({
        error: z.string().nullish(),
        validationErrorMessages: z.array(z.object({ attributePath: z.string().nullish(), message: z.string().nullish() })).nullish(),
      }),
    ]),
  }),
});

const v4Metadata = z
  .object({
    totalAvailableResults: z.number().nullish(),
    flags: z.array(z.object({ name: z.string().nullish(), value: z.boolean().nullish() })).nullish(),
  })
  .nullish();

/** The v4 response envelope `{data, metadata}` around a payload. */
export function v4Envelope<T extends z.ZodType>(data: T) {
  return z.object({ data, metadata: v4Metadata });
}

/** A list response: `data` is absent (not `[]`) when nothing matched. */
export function v4ListEnvelope<T extends z.ZodType>(item: T) {
  return z.object({ data: z.array(item).nullish(), metadata: v4Metadata });
}

const extIdRef = z.object({ extId: z.string().nullish() });
const ipAddress = z.object({ ipv4: z.object({ value: z.string() }).nullish(), ipv6: z.object({ value: z.string() }).nullish() });

export const v4TaskReferenceSchema = z.object({ extId: z.string() });

export const v4TaskSchema = z.object({
  extId: z.string().nullish(),
  status: z.string(),
  progressPercentage: z.number().nullish(),
  entitiesAffected: z.array(z.object({ extId: z.string().nullish(), rel: z.string().nullish(), name: z.string().nullish() })).nullish(),
  completionDetails: z.array(z.object({ name: z.string().nullish(), value: z.unknown() })).nullish(),
  errorMessages: z.array(z.object({ code: z.string().nullish(), message: z.string().nullish() })).nullish(),
  legacyErrorMessage: z.string().nullish(),
});
export type V4Task = z.infer<typeof v4TaskSchema>;

export const v4ClusterSchema = z.object({
  extId: z.string(),
  name: z.string().nullish(),
  config: z
    .object({
      clusterFunction: z.array(z.string()).nullish(),
      buildInfo: z.object({ version: z.string().nullish() }).nullish(),
      clusterSoftwareMap: z.array(z.object({ softwareType: z.string().nullish(), version: z.string().nullish() })).nullish(),
    })
    .nullish(),
  network: z
    .object({ externalAddress: ipAddress.nullish(), externalDataServiceIp: ipAddress.nullish() })
    .nullish(),
});

const v4VmDiskSchema = z.object({
  extId: z.string().nullish(),
  diskAddress: z.object({ busType: z.string(), index: z.number() }).nullish(),
  backingInfo: z
    .object({
      $objectType: z.string().nullish(),
      diskExtId: z.string().nullish(),
      diskSizeBytes: z.number().nullish(),
      storageContainer: extIdRef.nullish(),
      volumeGroupExtId: z.string().nullish(),
    })
    .nullish(),
});

export const v4VmSchema = z.object({
  extId: z.string(),
  name: z.string().nullish(),
  cluster: extIdRef.nullish(),
  powerState: z.string().nullish(),
  numSockets: z.number().nullish(),
  numCoresPerSocket: z.number().nullish(),
  memorySizeBytes: z.number().nullish(),
  categories: z.array(extIdRef).nullish(),
  disks: z.array(v4VmDiskSchema).nullish(),
  nics: z
    .array(
      z.object({
        extId: z.string().nullish(),
        backingInfo: z.object({ macAddress: z.string().nullish() }).nullish(),
        networkInfo: z
          .object({
            subnet: extIdRef.nullish(),
            ipv4Config: z.object({ ipAddress: z.object({ value: z.string() }).nullish() }).nullish(),
            ipv4Info: z.object({ learnedIpAddresses: z.array(z.object({ value: z.string() })).nullish() }).nullish(),
          })
          .nullish(),
      }),
    )
    .nullish(),
  guestTools: z
    .object({
      isInstalled: z.boolean().nullish(),
      isEnabled: z.boolean().nullish(),
      isReachable: z.boolean().nullish(),
      isVssSnapshotCapable: z.boolean().nullish(),
      capabilities: z.array(z.string()).nullish(),
      version: z.string().nullish(),
    })
    .nullish(),
});
export type V4Vm = z.infer<typeof v4VmSchema>;

export const v4CategorySchema = z.object({ extId: z.string(), key: z.string(), value: z.string() });

const v4RecoveryPointTypeSchema = z.enum(['CRASH_CONSISTENT', 'APPLICATION_CONSISTENT']);

export const v4VmRecoveryPointSchema = z.object({
  extId: z.string(),
  vmExtId: z.string().nullish(),
  recoveryPointType: v4RecoveryPointTypeSchema.nullish(),
  diskRecoveryPoints: z.array(z.object({ diskExtId: z.string().nullish(), diskRecoveryPointExtId: z.string() })).nullish(),
});

export const v4RecoveryPointSchema = z.object({
  extId: z.string(),
  name: z.string().nullish(),
  creationTime: z.string().nullish(),
  status: z.string().nullish(),
  recoveryPointType: v4RecoveryPointTypeSchema.nullish(),
  locationReferences: z.array(z.object({ locationExtId: z.string().nullish() })).nullish(),
  vmRecoveryPoints: z.array(v4VmRecoveryPointSchema).nullish(),
});
export type V4RecoveryPoint = z.infer<typeof v4RecoveryPointSchema>;

export const v4RecoveryPointCreateSchema = z.object({
  name: z.string(),
  recoveryPointType: v4RecoveryPointTypeSchema,
  expirationTime: z.string().optional(),
  vmRecoveryPoints: z
    .array(
      z.object({
        vmExtId: z.string(),
        applicationConsistentProperties: z
          .object({
            $objectType: z.literal('dataprotection.v4.common.VssProperties'),
            backupType: z.enum(['FULL_BACKUP', 'COPY_BACKUP']),
            shouldStoreVssMetadata: z.boolean().optional(),
          })
          .optional(),
      }),
    )
    .min(1)
    .max(30),
});

const v4DiskRecoveryPointReference = z.object({
  $objectType: z.literal('dataprotection.v4.content.VmDiskRecoveryPointReference'),
  recoveryPointExtId: z.string(),
  vmRecoveryPointExtId: z.string(),
  diskRecoveryPointExtId: z.string(),
});

export const v4DiscoverClusterRequestSchema = z.object({
  operation: z.literal('COMPUTE_CHANGED_REGIONS'),
  spec: z.object({
    $objectType: z.literal('dataprotection.v4.content.ComputeChangedRegionsClusterDiscoverSpec'),
    diskRecoveryPoint: v4DiskRecoveryPointReference,
    referenceDiskRecoveryPoint: v4DiskRecoveryPointReference.optional(),
  }),
});

export const v4ClusterInfoSchema = z.object({ clusterIp: ipAddress, jwtToken: z.string() });

export const v4ChangedRegionsRequestSchema = z.object({
  offset: z.number().int().min(0).optional(),
  length: z.number().int().min(1).optional(),
  blockSizeByte: z.union([z.literal(32768), z.literal(65536), z.literal(131072), z.literal(262144)]).optional(),
  referenceRecoveryPointExtId: z.string().optional(),
  referenceVmRecoveryPointExtId: z.string().optional(),
  referenceDiskRecoveryPointExtId: z.string().optional(),
});

export const v4ChangedRegionSchema = z.object({ offset: z.number(), length: z.number(), regionType: regionTypeSchema });

export const v4VolumeGroupSchema = z.object({
  extId: z.string().nullish(),
  name: z.string().nullish(),
  targetName: z.string().nullish(),
  targetPrefix: z.string().nullish(),
});

/** One entry of a volume group's iscsi-client-attachments. */
export const v4IscsiAttachmentSchema = z.object({ extId: z.string().nullish() });

export const v4IscsiClientSchema = z.object({
  extId: z.string().nullish(),
  iscsiInitiatorName: z.string().nullish(),
  attachedTargets: z.array(z.object({ iscsiTargetName: z.string().nullish() })).nullish(),
});

/** Accepts any JSON (or no body): for calls whose answer the client does not read. */
export const ignoredBodySchema = z.unknown();
