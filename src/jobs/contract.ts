/**
 * The contract between the run controller and the export Jobs (docs/jobs.md): what a Job is asked to do
 * (env SENDENSE_MOVER_REQUEST, JSON) and what it reports back (status patches of its VMBackupRun and the
 * termination message). Every request is parsed with these schemas before anything else happens.
 */
import { z } from 'zod';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { CopyTuningOverrideSchema, StorageTier } from '../mover/tiers.ts';
import { RecoveryPointRefSchema, VmConfigSchema } from '../repository/manifest.ts';

export const moverRequestEnv = 'SENDENSE_MOVER_REQUEST';
export const moverRequestApiVersion = 'sendense.io/mover-request/v1';
/** Where the container finds the repository PVC. */
export const repositoryMountPath = '/repository';
export const defaultTerminationLogPath = '/dev/termination-log';
/** Overrides the termination-message path (tests, or a pod whose terminationMessagePath differs). */
export const terminationLogEnv = 'SENDENSE_TERMINATION_LOG';
export const credentialEnv = { username: 'NUTANIX_USERNAME', password: 'NUTANIX_PASSWORD', caPem: 'NUTANIX_CA_PEM' } as const;

/** Exit codes of `sendense-nutanix mover …`; the Job's podFailurePolicy and the controller read them. */
export const MoverExitCode = {
  Ok: 0,
  Failed: 1,
  InvalidRequest: 2,
  Credentials: 3,
  PrismUnavailable: 4,
  NotFound: 5,
  Integrity: 6,
  /** A transient failure that survived the mover's own retries: a new attempt of the run may succeed. */
  Retryable: 75,
  Interrupted: 130,
} as const;
export type MoverExitCode = (typeof MoverExitCode)[keyof typeof MoverExitCode];
/** Exit codes for which starting the same Job again cannot help: the podFailurePolicy fails the Job at once. */
export const permanentExitCodes: readonly number[] = [MoverExitCode.InvalidRequest, MoverExitCode.Credentials, MoverExitCode.NotFound, MoverExitCode.Integrity];

const objectName = z.string().min(1).max(253).regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);
const pointId = z.string().regex(/^\d{8}T\d{6}Z-[0-9a-f]{6}$/, 'a point id like 20261126T201500Z-3fa2c1');

export const RunRefSchema = z.object({ namespace: objectName, name: objectName });
export type RunRef = z.infer<typeof RunRefSchema>;

export const PrismTargetSchema = z.object({
  endpoint: z.url({ protocol: /^https$/ }),
  insecureSkipTlsVerify: z.boolean().default(false),
});

export const RepositoryLocationSchema = z.object({
  /** Mount path of the PVC in the container. */
  root: z.string().startsWith('/').default(repositoryMountPath),
  /** Directory inside the volume (the policy's repository path); empty is its root. */
  path: z
    .string()
    .max(1024)
    .default('')
    .refine((p) => !p.startsWith('/') && !p.split('/').includes('..'), 'relative, without ..'),
});

export const VmRefSchema = z.object({ uuid: z.string().min(1), name: z.string(), clusterUuid: z.string().min(1) });

export const RecoveryPointSchema = z.object({
  id: z.string().min(1),
  generation: z.enum(['v3', 'v4']),
  name: z.string(),
  vmUuid: z.string().min(1),
  vmRecoveryPointId: z.string().optional(),
  clusterUuid: z.string().optional(),
  consistency: z.enum(['APPLICATION_CONSISTENT', 'CRASH_CONSISTENT']),
  createdAt: z.string().optional(),
  disks: z.array(z.object({ diskUuid: z.string(), diskRecoveryPointId: z.string().optional(), snapshotFilePath: z.string().optional() })),
});

export const VmDiskSchema = z.object({
  uuid: z.string().min(1),
  index: z.number().int().nonnegative(),
  busType: z.string(),
  deviceIndex: z.number().int(),
  sizeBytes: z.number().int().positive(),
  container: z.object({ uuid: z.string().optional(), name: z.string().optional() }).optional(),
});

/** Identifies the attempt: the point every disk Job writes into. */
const attempt = {
  run: RunRefSchema,
  prism: PrismTargetSchema,
  repository: RepositoryLocationSchema,
  vm: VmRefSchema,
  pointId,
};

export const DiskRequestSchema = z.object({
  apiVersion: z.literal(moverRequestApiVersion),
  kind: z.literal('disk'),
  ...attempt,
  /** Parent point the overlays chain onto; null when no disk can be incremental. */
  parentPointId: pointId.nullable(),
  /** Start of the run (the manifest's createdAt). */
  createdAt: z.iso.datetime({ offset: true }),
  recoveryPoint: RecoveryPointSchema,
  disk: VmDiskSchema,
  /** Position of this disk in the run's status.disks (the controller created that list in disk order). */
  statusIndex: z.number().int().min(0).max(255),
  /** The same disk in the parent point, whose recovery point still exists: changed regions are taken against it. */
  base: z.object({ recoveryPoint: RecoveryPointSchema, diskUuid: z.string().min(1), sizeBytes: z.number().int().positive() }).optional(),
  /** Why there is no base although the run is incremental (e.g. "new disk"). */
  noBaseReason: z.string().optional(),
  initiatorName: z.string().min(1),
  /** Put into the export volume group's name (the run's uid), so the controller can release what a killed mover left. */
  exportTag: z.string().regex(/^[a-z0-9-]{1,64}$/).optional(),
  tier: z.enum([StorageTier.Ssd, StorageTier.Hybrid, StorageTier.Archive]).optional(),
  tuning: CopyTuningOverrideSchema.optional(),
  changedRegionBlockSize: z.number().int().min(4096).max(1024 * 1024).optional(),
  progressIntervalSeconds: z.number().min(0.5).max(60).default(3),
});
export type DiskRequest = z.infer<typeof DiskRequestSchema>;
export type DiskRequestInput = z.input<typeof DiskRequestSchema>;

export const RetentionSchema = z.object({
  keepLast: z.number().int().min(0),
  keepDaily: z.number().int().min(0).optional(),
  keepWeekly: z.number().int().min(0).optional(),
  keepMonthly: z.number().int().min(0).optional(),
});

export const CommitRequestSchema = z.object({
  apiVersion: z.literal(moverRequestApiVersion),
  kind: z.literal('commit'),
  ...attempt,
  /** Every disk index of the point; the commit refuses when one has no result. */
  diskIndexes: z.array(z.number().int().nonnegative()).min(1),
  /** Why the point is a full when no disk is an overlay (e.g. "first backup", "base recovery point gone → full"). */
  typeReason: z.string(),
  vmConfig: VmConfigSchema,
  consistency: z.object({
    requested: z.enum(['auto', 'application', 'crash']),
    obtained: z.enum(['APPLICATION_CONSISTENT', 'CRASH_CONSISTENT']),
    reason: z.string().optional(),
  }),
  recoveryPoint: RecoveryPointRefSchema,
  /** Recovery points on Nutanix no longer needed once this point is committed (the previous base). */
  supersededRecoveryPointIds: z.array(z.string().min(1)).default([]),
  /** Restore-point retention applied to the VM after the commit. */
  retention: RetentionSchema.optional(),
});
export type CommitRequest = z.infer<typeof CommitRequestSchema>;
export type CommitRequestInput = z.input<typeof CommitRequestSchema>;

/** Removes a failed attempt's staging folder (no Prism access: the controller deletes the recovery point). */
export const CleanupRequestSchema = z.object({
  apiVersion: z.literal(moverRequestApiVersion),
  kind: z.literal('cleanup'),
  run: RunRefSchema,
  repository: RepositoryLocationSchema,
  vm: VmRefSchema,
  pointId,
});
export type CleanupRequest = z.infer<typeof CleanupRequestSchema>;
export type CleanupRequestInput = z.input<typeof CleanupRequestSchema>;

export const MoverRequestSchema = z.discriminatedUnion('kind', [DiskRequestSchema, CommitRequestSchema, CleanupRequestSchema]);
export type MoverRequest = z.infer<typeof MoverRequestSchema>;
export type MoverRequestInput = z.input<typeof MoverRequestSchema>;

/** Termination message of a disk Job (kept well under the kubelet's 4 KiB). */
export const DiskJobResultSchema = z.object({
  kind: z.literal('disk'),
  diskIndex: z.number().int(),
  diskUuid: z.string(),
  overlay: z.boolean(),
  fullReason: z.string().optional(),
  logicalBytes: z.number(),
  changedBytes: z.number(),
  transferredBytes: z.number(),
  zeroBytes: z.number(),
  durationMs: z.number(),
  throughputBytesPerSec: z.number(),
  /** True when an earlier attempt of this Job had already written the disk and nothing was copied again. */
  reused: z.boolean(),
});
export type DiskJobResult = z.infer<typeof DiskJobResultSchema>;

export const CommitJobResultSchema = z.object({
  kind: z.literal('commit'),
  pointId: z.string(),
  type: z.enum(['full', 'incremental']),
  typeReason: z.string(),
  parentPointId: z.string().nullable(),
  leftoversRemoved: z.array(z.string()),
  deletedRecoveryPointIds: z.array(z.string()),
  retentionDeletedPointIds: z.array(z.string()),
});
export type CommitJobResult = z.infer<typeof CommitJobResultSchema>;

export const CleanupJobResultSchema = z.object({ kind: z.literal('cleanup'), pointId: z.string(), removed: z.boolean() });
export type CleanupJobResult = z.infer<typeof CleanupJobResultSchema>;

/** Termination message of a failed mover: the reason the controller puts into the run's status. */
export const MoverFailureSchema = z.object({
  kind: z.literal('failure'),
  code: z.string(),
  message: z.string(),
  hint: z.string().optional(),
  exitCode: z.number().int(),
  retryable: z.boolean(),
});
export type MoverFailure = z.infer<typeof MoverFailureSchema>;

export type MoverResult = DiskJobResult | CommitJobResult | CleanupJobResult;
export const TerminationMessageSchema = z.discriminatedUnion('kind', [DiskJobResultSchema, CommitJobResultSchema, CleanupJobResultSchema, MoverFailureSchema]);
export type TerminationMessage = z.infer<typeof TerminationMessageSchema>;

/** Reads the request of `kind` from the environment; a missing or invalid one names the field. */
export function parseMoverRequest<K extends MoverRequest['kind']>(kind: K, env: NodeJS.ProcessEnv): Extract<MoverRequest, { kind: K }> {
  const text = env[moverRequestEnv];
  if (!text) {
    throw new AppError(ErrorCode.InvalidInput, `${moverRequestEnv} is not set`, { hint: `the Job must pass the ${kind} request as JSON in env ${moverRequestEnv}` });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new AppError(ErrorCode.InvalidInput, `${moverRequestEnv} is not JSON`, { hint: 'build the Job with src/jobs/job-spec.ts' });
  }
  const parsed = MoverRequestSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new AppError(ErrorCode.InvalidInput, `${moverRequestEnv} is invalid: ${issues}`, { hint: 'build the Job with src/jobs/job-spec.ts' });
  }
  if (parsed.data.kind !== kind) {
    throw new AppError(ErrorCode.InvalidInput, `${moverRequestEnv} is a ${parsed.data.kind} request, not ${kind}`, { hint: `run \`sendense-nutanix mover ${parsed.data.kind}\`` });
  }
  return parsed.data as Extract<MoverRequest, { kind: K }>;
}
