/**
 * Builds the Job objects the run controller creates: one per disk (`mover disk`), one for the commit
 * (`mover commit`) and one to remove a failed attempt (`mover cleanup`). Pure: same input, same object.
 */
import { createHash } from 'node:crypto';
import type { V1EnvVar, V1Job, V1ResourceRequirements } from '@kubernetes/client-node';
import {
  credentialEnv,
  moverRequestEnv,
  MoverRequestSchema,
  permanentExitCodes,
  repositoryMountPath,
  type CleanupRequestInput,
  type CommitRequestInput,
  type DiskRequestInput,
  type MoverRequestInput,
} from './contract.ts';

export const moverServiceAccount = 'sendense-nutanix-mover';
export const jobLabels = { component: 'app.kubernetes.io/component', run: 'backup.sendense.io/run', role: 'backup.sendense.io/job-role', disk: 'backup.sendense.io/disk-index' } as const;

export interface OwnerRun {
  name: string;
  namespace: string;
  uid: string;
}

export interface JobEnvironment {
  /** Container image holding `sendense-nutanix`. */
  image: string;
  imagePullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
  /** The NutanixCluster's credentials Secret and its keys. */
  credentialsSecret: { name: string; usernameKey: string; passwordKey: string };
  /** The NutanixCluster's CA Secret, when set. */
  caSecret?: { name: string; key: string };
  /** The repository PVC, mounted at /repository. */
  repositoryClaim: string;
  resources?: V1ResourceRequirements;
  /** Kills a Job that runs longer (default 6 h for a disk, 1 h for commit and cleanup). */
  activeDeadlineSeconds?: number;
  /** Finished Jobs are deleted after this (default 1 h): the run's status keeps the figures. */
  ttlSecondsAfterFinished?: number;
  /** The Pods' ServiceAccount (chart value mover.serviceAccount.name); default sendense-nutanix-mover. */
  serviceAccountName?: string;
  /** Extra labels (e.g. the policy's). */
  labels?: Record<string, string>;
}

const defaultResources: V1ResourceRequirements = {
  requests: { cpu: '250m', memory: '256Mi' },
  limits: { cpu: '2', memory: '1Gi' },
};

/** `<run>-<suffix>`, kept within 63 characters (the Job name becomes a label value) by a hash of the full name. */
export function jobName(runName: string, suffix: string): string {
  const full = `${runName}-${suffix}`;
  if (full.length <= 63) return full;
  const hash = createHash('sha256').update(full).digest('hex').slice(0, 8);
  return `${runName.slice(0, 63 - suffix.length - 10).replace(/[-.]+$/, '')}-${hash}-${suffix}`;
}

export function diskJobName(runName: string, diskIndex: number): string {
  return jobName(runName, `disk-${diskIndex}`);
}

function credentialsEnv(environment: JobEnvironment, withPrism: boolean): V1EnvVar[] {
  if (!withPrism) return [];
  const env: V1EnvVar[] = [
    { name: credentialEnv.username, valueFrom: { secretKeyRef: { name: environment.credentialsSecret.name, key: environment.credentialsSecret.usernameKey } } },
    { name: credentialEnv.password, valueFrom: { secretKeyRef: { name: environment.credentialsSecret.name, key: environment.credentialsSecret.passwordKey } } },
  ];
  if (environment.caSecret) env.push({ name: credentialEnv.caPem, valueFrom: { secretKeyRef: { name: environment.caSecret.name, key: environment.caSecret.key } } });
  return env;
}

function buildJob(owner: OwnerRun, request: MoverRequestInput, name: string, role: string, environment: JobEnvironment, deadline: number, extraLabels: Record<string, string>): V1Job {
  // Validated here too, so the controller learns of a bad request when it builds the Job, not when the Job fails.
  const parsed = MoverRequestSchema.parse(request);
  const labels = { ...environment.labels, [jobLabels.component]: 'export', [jobLabels.run]: owner.name, [jobLabels.role]: role, ...extraLabels };
  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: {
      name,
      namespace: owner.namespace,
      labels,
      ownerReferences: [{ apiVersion: 'backup.sendense.io/v1alpha1', kind: 'VMBackupRun', name: owner.name, uid: owner.uid, controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      // Kubernetes never retries: the mover retries what is safe, the controller decides about new attempts.
      backoffLimit: 0,
      podFailurePolicy: {
        rules: [
          // A node drain or preemption is not the mover's failure: it does not count against backoffLimit.
          { action: 'Ignore', onPodConditions: [{ type: 'DisruptionTarget', status: 'True' }] },
          { action: 'FailJob', onExitCodes: { operator: 'In', values: [...permanentExitCodes] } },
        ],
      },
      activeDeadlineSeconds: environment.activeDeadlineSeconds ?? deadline,
      ttlSecondsAfterFinished: environment.ttlSecondsAfterFinished ?? 3600,
      template: {
        metadata: { labels },
        spec: {
          restartPolicy: 'Never',
          serviceAccountName: environment.serviceAccountName ?? moverServiceAccount,
          automountServiceAccountToken: true,
          securityContext: { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: 'RuntimeDefault' } },
          containers: [
            {
              name: 'mover',
              image: environment.image,
              ...(environment.imagePullPolicy ? { imagePullPolicy: environment.imagePullPolicy } : {}),
              command: ['sendense-nutanix', 'mover', parsed.kind],
              env: [{ name: moverRequestEnv, value: JSON.stringify(parsed) }, ...credentialsEnv(environment, parsed.kind !== 'cleanup')],
              resources: environment.resources ?? defaultResources,
              securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ['ALL'] } },
              terminationMessagePath: '/dev/termination-log',
              terminationMessagePolicy: 'FallbackToLogsOnError',
              volumeMounts: [
                { name: 'repository', mountPath: repositoryMountPath },
                { name: 'tmp', mountPath: '/tmp' },
              ],
            },
          ],
          volumes: [
            { name: 'repository', persistentVolumeClaim: { claimName: environment.repositoryClaim } },
            { name: 'tmp', emptyDir: { sizeLimit: '256Mi' } },
          ],
        },
      },
    },
  };
}

/** The export Job of one disk; `request.run` names the VMBackupRun it reports to. */
export function buildDiskJob(owner: OwnerRun, request: DiskRequestInput, environment: JobEnvironment): V1Job {
  return buildJob(owner, request, diskJobName(owner.name, request.disk.index), 'disk', environment, 6 * 3600, { [jobLabels.disk]: String(request.disk.index) });
}

/** The Job that commits the restore point once every disk Job succeeded. */
export function buildCommitJob(owner: OwnerRun, request: CommitRequestInput, environment: JobEnvironment): V1Job {
  return buildJob(owner, request, jobName(owner.name, 'commit'), 'commit', environment, 3600, {});
}

/** The Job that removes a failed attempt's staging folder. */
export function buildCleanupJob(owner: OwnerRun, request: CleanupRequestInput, environment: JobEnvironment): V1Job {
  return buildJob(owner, request, jobName(owner.name, 'cleanup'), 'cleanup', environment, 3600, {});
}
