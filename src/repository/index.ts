/** The backup repository's public API (see docs/repository.md). */
export { diskImageName, newPointId, pointDir, relativeBackingFile, vmDir, type VmRef } from './layout.ts';
export { fsError, freeBytes } from './durable-fs.ts';
export { ManifestSchema, JournalSchema, PointType, type Journal, type JournalResource, type Manifest, type ManifestDisk, type RecoveryPointRef, type VmConfig } from './manifest.ts';
export { readChecksumsFile, type ByteRange, type DiskChecksums } from './checksums.ts';
export {
  ensureFreeSpace,
  findVms,
  listPoints,
  listVmPoints,
  listVms,
  readManifest,
  resolvePoint,
  resolveVm,
  scanVm,
  summarizePoints,
  type PointSummary,
  type RestorePoint,
} from './points.ts';
export { beginPoint, recoverLeftovers, StagedPoint, type CommitRequest, type DiskImageTarget, type Leftover, type LeftoverReport, type StagedDisk } from './staging.ts';
export { applyRetention, deletePoints, planRetention, type RetentionPlan, type RetentionPolicy } from './retention.ts';
export { restoreDisk, type RestoreRequest, type RestoreResult } from './restore.ts';
export { verifyRepository, xxh3Hex, VerifyIssueKind, type VerifyIssue, type VerifyOptions, type VerifyReport } from './verify.ts';
export { commitSharedPoint, prepareSharedPoint, removeSharedPoint, SharedPoint, type SharedCommitRequest, type SharedPointSpec } from './shared-point.ts';
export { DiskResultSchema, type DiskResult } from './manifest.ts';
