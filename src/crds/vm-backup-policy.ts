/** VMBackupPolicy (`vmbp`): which VMs of a NutanixCluster to back up, when, how, where to, and how long to keep them. */
import { z } from 'zod';
import {
  ageColumn,
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

const vmCriteria = {
  vmNames: z.array(z.string().min(1).max(256)).max(1000).optional().describe('VM names, exactly as in Prism.'),
  vmUUIDs: z.array(nutanixUuid).max(1000).optional(),
  namePattern: z
    .string()
    .min(1)
    .max(256)
    .optional()
    .describe('Glob on the whole VM name, case-sensitive: * any run of characters, ? one character, [abc] one of a set; e.g. db-*.'),
  categories: z
    .record(z.string().min(1), z.array(z.string()).min(1))
    .optional()
    .describe('Nutanix categories: a VM matches when, for every key listed, it has one of the values listed for that key.'),
};
const hasCriterion = 'has(self.vmNames) || has(self.vmUUIDs) || has(self.namePattern) || has(self.categories)';

export const vmSelector = z
  .object({
    ...vmCriteria,
    exclude: z.object(vmCriteria).optional().describe('VMs matching any of these are left out even when selected above.'),
  })
  .meta(celRules({ rule: hasCriterion, message: 'select VMs by at least one of vmNames, vmUUIDs, namePattern or categories', reason: 'FieldValueRequired' }));

export const retention = z
  .object({
    keepLast: z.number().int().min(0).max(1000).default(7).describe('Most recent restore points kept per VM.'),
    daily: z.number().int().min(0).max(1000).default(0).describe('Newest restore point of each of the last N days.'),
    weekly: z.number().int().min(0).max(1000).default(0).describe('Newest restore point of each of the last N weeks.'),
    monthly: z.number().int().min(0).max(1000).default(0).describe('Newest restore point of each of the last N months.'),
  })
  .prefault({})
  .meta(celRules({ rule: 'self.keepLast + self.daily + self.weekly + self.monthly > 0', message: 'retention must keep at least one restore point' }));

export const vmBackupPolicySpec = z.object({
  clusterRef: localObjectReference.describe('NutanixCluster in the same namespace.'),
  selector: vmSelector,
  schedule: z
    .string()
    .regex(/^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+( +\S+){4,5})$/)
    .describe('Cron expression with five fields (minute hour day-of-month month day-of-week), six with a leading seconds field, or @daily and the like.'),
  timeZone: z.string().min(1).max(64).optional().describe('IANA time zone of the schedule, e.g. Europe/Berlin; UTC when unset.'),
  suspend: z.boolean().default(false).describe('No new runs are scheduled while true; running ones finish; ticks missed while suspended are not run later.'),
  startingDeadlineSeconds: z
    .number()
    .int()
    .min(1)
    .max(31 * 86_400)
    .default(3600)
    .describe('A tick missed (operator down) is still run when at most this late; older ticks are skipped and recorded. Only the newest missed tick is ever run.'),
  consistency: consistencyMode.default('auto'),
  fullBackup: z
    .object({
      everyDays: z.number().int().min(1).max(365).default(7).describe('A full backup at least every N days; incrementals between.'),
      everyRuns: z.number().int().min(1).max(1000).optional().describe('Also a full at least every N-th successful backup of a VM (1 = always full).'),
    })
    .prefault({}),
  repository,
  retention,
  concurrencyPolicy: z.enum(['Forbid', 'Allow']).default('Forbid').describe('Forbid never starts a run of a VM while another run of it is active.'),
  successfulRunsHistoryLimit: z.number().int().min(0).max(100).default(3).describe('Finished successful VMBackupRuns kept per VM.'),
  failedRunsHistoryLimit: z.number().int().min(0).max(100).default(1).describe('Failed VMBackupRuns kept per VM.'),
});
export type VMBackupPolicySpec = z.infer<typeof vmBackupPolicySpec>;

export const vmBackupPolicyStatus = z.object({
  observedGeneration: observedGeneration.optional(),
  conditions: conditions.optional().describe('Ready, and a condition naming the field when the spec is invalid (e.g. the schedule).'),
  protectedVMs: z
    .array(z.object({ name: z.string(), uuid: z.string() }))
    .max(100)
    .optional()
    .describe('VMs the selector matches now, the first 100 by name; protectedVMCount has the total.'),
  protectedVMCount: z.number().int().min(0).optional(),
  lastScheduleTime: timestamp.optional(),
  nextScheduleTime: timestamp.optional(),
  lastSuccessfulRuns: z
    .array(
      z.object({
        vmUUID: z.string(),
        vmName: z.string(),
        runName: z.string(),
        completionTime: timestamp,
        pointId: z.string().optional().describe('Restore point the run wrote.'),
        backupType: z.enum(['Full', 'Incremental']).optional(),
        lastFullTime: timestamp.optional().describe('Completion of the last successful full backup of this VM: the full cadence counts from here.'),
        incrementalsSinceFull: z.number().int().min(0).optional().describe('Successful incrementals since that full.'),
      }),
    )
    .max(5000)
    .meta({ 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['vmUUID'] })
    .optional()
    .describe('Last successful run of each VM.'),
  lastSkippedSchedule: z
    .object({
      scheduleTime: timestamp,
      reason: z.enum(['Suspended', 'MissedStartingDeadline']),
      message: z.string(),
    })
    .optional()
    .describe('Newest tick that started no runs, and why; ticks before it are never run later.'),
});
export type VMBackupPolicyStatus = z.infer<typeof vmBackupPolicyStatus>;

export const vmBackupPolicy = customResource('VMBackupPolicy', vmBackupPolicySpec, vmBackupPolicyStatus);
export type VMBackupPolicy = z.infer<typeof vmBackupPolicy>;

export const vmBackupPolicyKind: CustomResourceKind = {
  kind: 'VMBackupPolicy',
  plural: 'vmbackuppolicies',
  singular: 'vmbackuppolicy',
  shortNames: ['vmbp'],
  description: 'Scheduled backups of the Nutanix VMs a selector matches, with retention.',
  spec: vmBackupPolicySpec,
  status: vmBackupPolicyStatus,
  printerColumns: [
    { name: 'Cluster', type: 'string', jsonPath: '.spec.clusterRef.name' },
    { name: 'Schedule', type: 'string', jsonPath: '.spec.schedule' },
    { name: 'Suspend', type: 'boolean', jsonPath: '.spec.suspend' },
    { name: 'VMs', type: 'integer', jsonPath: '.status.protectedVMCount' },
    { name: 'Last Schedule', type: 'date', jsonPath: '.status.lastScheduleTime' },
    { name: 'Next Schedule', type: 'string', jsonPath: '.status.nextScheduleTime', priority: 1 },
    ageColumn,
  ],
};
