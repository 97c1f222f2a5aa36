/**
 * On-disk documents of a restore point, each versioned by `apiVersion` and parsed with zod on every read:
 * the manifest (what the point is), the journal (what an attempt created on Nutanix) and the per-disk
 * checksum file.
 */
import { z } from 'zod';

export const manifestApiVersion = 'sendense.io/restore-point/v1';
export const journalApiVersion = 'sendense.io/backup-journal/v1';
export const checksumsApiVersion = 'sendense.io/disk-checksums/v1';

const isoTime = z.iso.datetime({ offset: true });
const hash64 = z.string().regex(/^[0-9a-f]{16}$/, 'xxh3-64 as 16 lower-case hex digits');
const byteCount = z.number().int().nonnegative();

export const PointType = { Full: 'full', Incremental: 'incremental' } as const;
export type PointType = (typeof PointType)[keyof typeof PointType];

export const VmConfigSchema = z.object({
  uuid: z.string().min(1),
  name: z.string(),
  cluster: z.object({ uuid: z.string().min(1), name: z.string().optional() }),
  powerState: z.string(),
  numSockets: z.number().int().optional(),
  numVcpusPerSocket: z.number().int().optional(),
  memorySizeMib: z.number().int().optional(),
  ngt: z.object({
    installed: z.boolean(),
    enabled: z.boolean(),
    reachable: z.boolean(),
    vssSnapshotCapable: z.boolean(),
    version: z.string().optional(),
  }),
  categories: z.record(z.string(), z.string()),
  disks: z.array(
    z.object({
      uuid: z.string(),
      index: z.number().int().nonnegative(),
      busType: z.string(),
      deviceIndex: z.number().int(),
      sizeBytes: byteCount,
      container: z.object({ uuid: z.string().optional(), name: z.string().optional() }).optional(),
    }),
  ),
  nics: z.array(
    z.object({
      uuid: z.string().optional(),
      macAddress: z.string().optional(),
      subnet: z.object({ uuid: z.string().optional(), name: z.string().optional() }).optional(),
      ipAddresses: z.array(z.string()),
    }),
  ),
});
export type VmConfig = z.infer<typeof VmConfigSchema>;

export const RecoveryPointRefSchema = z.object({
  id: z.string().min(1),
  generation: z.enum(['v3', 'v4']),
  vmRecoveryPointId: z.string().optional(),
  disks: z.array(
    z.object({
      diskUuid: z.string(),
      diskRecoveryPointId: z.string().optional(),
      snapshotFilePath: z.string().optional(),
    }),
  ),
});
export type RecoveryPointRef = z.infer<typeof RecoveryPointRefSchema>;

export const DiskCopyStatsSchema = z.object({
  logicalBytes: byteCount,
  changedBytes: byteCount,
  transferredBytes: byteCount,
  zeroBytes: byteCount,
  durationMs: z.number().nonnegative(),
  throughputBytesPerSec: z.number().nonnegative(),
});

export const ManifestDiskSchema = z.object({
  index: z.number().int().nonnegative(),
  uuid: z.string(),
  logicalSizeBytes: byteCount,
  /** File name inside the point folder. */
  image: z.string(),
  /** As written in the qcow2 header (relative to the point folder); null for a standalone image. */
  backingFile: z.string().nullable(),
  stats: DiskCopyStatsSchema,
  /** File name inside the point folder. */
  checksums: z.string(),
  checksummedBlocks: z.number().int().nonnegative(),
  zeroRanges: z.number().int().nonnegative(),
});
export type ManifestDisk = z.infer<typeof ManifestDiskSchema>;

export const ManifestSchema = z.object({
  apiVersion: z.literal(manifestApiVersion),
  pointId: z.string(),
  parentPointId: z.string().nullable(),
  type: z.enum(['full', 'incremental']),
  /** Why this type, e.g. "first backup", "base recovery point gone → full". */
  typeReason: z.string(),
  createdAt: isoTime,
  completedAt: isoTime,
  vm: VmConfigSchema,
  consistency: z.object({
    requested: z.enum(['auto', 'application', 'crash']),
    obtained: z.enum(['APPLICATION_CONSISTENT', 'CRASH_CONSISTENT']),
    reason: z.string().optional(),
  }),
  recoveryPoint: RecoveryPointRefSchema,
  disks: z.array(ManifestDiskSchema),
});
export type Manifest = z.infer<typeof ManifestSchema>;

export const JournalResourceSchema = z.object({
  kind: z.enum(['recovery-point', 'volume-group', 'iscsi-attachment']),
  id: z.string().min(1),
  /** Whatever else the engine needs to delete it (generation, initiator name, target IQN...). */
  detail: z.record(z.string(), z.string()).optional(),
});
export type JournalResource = z.infer<typeof JournalResourceSchema>;

export const JournalSchema = z.object({
  apiVersion: z.literal(journalApiVersion),
  pointId: z.string(),
  clusterUuid: z.string(),
  vmUuid: z.string(),
  pid: z.number().int(),
  hostname: z.string(),
  startedAt: isoTime,
  /** Idempotency key of the recovery point request, recorded before the request so a crash mid-call is covered. */
  recoveryPointRequestId: z.string().optional(),
  /** Multi-process points (operator export Jobs): the parent the disks chain onto, read back by the commit. */
  parentPointId: z.string().nullable().optional(),
  /** Things on Nutanix this attempt created and has not released yet. */
  resources: z.array(JournalResourceSchema),
});
export type Journal = z.infer<typeof JournalSchema>;

/** What one export Job leaves beside its disk image: the manifest entry plus how the disk was planned. */
export const diskResultApiVersion = 'sendense.io/disk-result/v1';
export const DiskResultSchema = ManifestDiskSchema.extend({
  apiVersion: z.literal(diskResultApiVersion),
  overlay: z.boolean(),
  /** Why this disk was copied in full although the point is incremental. */
  fullReason: z.string().optional(),
});
export type DiskResult = z.infer<typeof DiskResultSchema>;

export const ChecksumsHeaderSchema = z.object({
  apiVersion: z.literal(checksumsApiVersion),
  algorithm: z.literal('xxh3-64'),
  diskIndex: z.number().int().nonnegative(),
});

/** One line of the checksum file after the header: a hashed data block, or a range recorded as zeros. */
export const ChecksumLineSchema = z.union([
  z.object({ offset: byteCount, length: z.number().int().positive(), hash: hash64 }),
  z.object({ offset: byteCount, length: z.number().int().positive(), zero: z.literal(true) }),
]);
