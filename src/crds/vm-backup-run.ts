/**
 * VMBackupRun (`vmbr`): one backup of one VM, created by a VMBackupPolicy or by hand ("run now" is
 * `kubectl create` of a run with a policyRef).
 */
import { z } from 'zod';
import {
  ageColumn,
  byteCount,
  celRules,
  conditions,
  consistencyMode,
  customResource,
  localObjectReference,
  nutanixUuid,
  observedGeneration,
  repository,
  timestamp,
  type CustomResourceKind,
} from './common.ts';

export const vmBackupRunSpec = z
  .object({
    policyRef: localObjectReference.optional().describe('VMBackupPolicy whose cluster, repository and settings this run uses.'),
    clusterRef: localObjectReference.optional().describe('NutanixCluster, for a run without a policy.'),
    repository: repository.optional().describe('Repository, for a run without a policy.'),
    vm: z
      .object({ name: z.string().min(1).max(256).optional(), uuid: nutanixUuid.optional() })
      .meta(celRules({ rule: 'has(self.name) || has(self.uuid)', message: 'name the VM by name or uuid', reason: 'FieldValueRequired' }))
      .describe('The VM to back up; the uuid wins when both are given.'),
    type: z.enum(['auto', 'full']).default('auto').describe('auto makes an incremental backup when a usable previous one exists, a full otherwise.'),
    consistency: consistencyMode.optional().describe("Overrides the policy's consistency; auto when neither sets it."),
  })
  .meta(
    celRules(
      {
        rule: 'has(self.policyRef) || (has(self.clusterRef) && has(self.repository))',
        message: 'a run without policyRef needs clusterRef and repository',
        reason: 'FieldValueRequired',
      },
      { rule: 'self == oldSelf', message: 'spec is immutable: create a new VMBackupRun instead' },
    ),
  );
export type VMBackupRunSpec = z.infer<typeof vmBackupRunSpec>;

export const runPhase = z.enum(['Pending', 'Snapshotting', 'Exporting', 'Finalizing', 'Succeeded', 'PartiallyFailed', 'Failed']);
export type RunPhase = z.infer<typeof runPhase>;

const byteFigures = {
  sizeBytes: byteCount().optional().describe('Virtual size.'),
  changedBytes: byteCount().optional().describe('Bytes Nutanix reported changed (all allocated bytes for a full).'),
  transferredBytes: byteCount().optional().describe('Bytes read from Nutanix and written.'),
  zeroBytes: byteCount().optional().describe('Bytes found to be zero and stored as such.'),
};

export const diskExport = z.object({
  diskUUID: z.string().min(1),
  ...byteFigures,
  progressPercent: z.number().int().min(0).max(100).optional(),
  throughputBytesPerSecond: byteCount().optional(),
  jobName: z.string().optional().describe('Export Job copying this disk.'),
  index: z.number().int().min(0).optional().describe("The disk's position among the VM's disks (its file in the restore point)."),
  failureReason: z.string().optional().describe('Why the export of this disk failed.'),
});

export const vmBackupRunStatus = z.object({
  observedGeneration: observedGeneration.optional(),
  phase: runPhase.optional(),
  conditions: conditions.optional(),
  vm: z
    .object({ name: z.string(), uuid: z.string(), clusterUUID: z.string().optional().describe('Nutanix cluster (Prism Element) holding the VM.') })
    .optional()
    .describe('The VM as resolved in Prism.'),
  pointId: z.string().optional().describe('Restore point this run writes in the repository (<repo>/<cluster>/<vm>/<pointId>).'),
  base: z
    .object({
      runName: z.string(),
      pointId: z.string(),
      recoveryPointId: z.string(),
    })
    .optional()
    .describe('The previous successful run of this VM into the same repository that incrementals chain onto.'),
  commitJobName: z.string().optional().describe('Job that commits the restore point.'),
  cleanupJobName: z.string().optional().describe('Job that removed the staging folder of a failed attempt.'),
  backupType: z.enum(['Full', 'Incremental']).optional().describe('What was actually done.'),
  backupTypeReason: z.string().optional().describe('Why, e.g. why an incremental fell back to a full.'),
  consistency: z.enum(['application', 'crash']).optional().describe('Consistency the recovery point actually has.'),
  consistencyReason: z.string().optional().describe('Why it is weaker than requested, when it is.'),
  recoveryPointIds: z.array(z.string()).optional().describe('Nutanix recovery points this run created.'),
  disks: z
    .array(diskExport)
    .max(256)
    .meta({ 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['diskUUID'] })
    .optional(),
  totals: z.object(byteFigures).optional(),
  dataReductionRatio: z.number().min(0).optional().describe('Changed bytes divided by bytes stored.'),
  startTime: timestamp.optional(),
  completionTime: timestamp.optional(),
  failureReason: z.string().optional(),
  summary: z
    .object({ changed: z.string(), throughput: z.string(), duration: z.string() })
    .partial()
    .optional()
    .describe('Human-readable figures for the printer columns (e.g. 1.2 GiB, 180 MiB/s, 2m10s); the numbers are above.'),
});
export type VMBackupRunStatus = z.infer<typeof vmBackupRunStatus>;

export const vmBackupRun = customResource('VMBackupRun', vmBackupRunSpec, vmBackupRunStatus);
export type VMBackupRun = z.infer<typeof vmBackupRun>;

export const vmBackupRunKind: CustomResourceKind = {
  kind: 'VMBackupRun',
  plural: 'vmbackupruns',
  singular: 'vmbackuprun',
  shortNames: ['vmbr'],
  description: 'One backup of one Nutanix VM.',
  spec: vmBackupRunSpec,
  status: vmBackupRunStatus,
  printerColumns: [
    { name: 'VM', type: 'string', jsonPath: '.status.vm.name' },
    { name: 'Type', type: 'string', jsonPath: '.status.backupType' },
    { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
    { name: 'Changed', type: 'string', jsonPath: '.status.summary.changed' },
    { name: 'Throughput', type: 'string', jsonPath: '.status.summary.throughput' },
    { name: 'Duration', type: 'string', jsonPath: '.status.summary.duration' },
    ageColumn,
    { name: 'Policy', type: 'string', jsonPath: '.spec.policyRef.name', priority: 1 },
  ],
};
