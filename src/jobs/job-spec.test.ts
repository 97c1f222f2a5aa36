import { describe, expect, it } from 'vitest';
import { DiskRequestSchema, moverRequestEnv, permanentExitCodes, type DiskRequestInput } from './contract.ts';
import { buildCleanupJob, buildDiskJob, diskJobName, jobName, moverServiceAccount } from './job-spec.ts';

const owner = { name: 'web-01-20261126', namespace: 'backups', uid: '5f0c3a7e-1111-2222-3333-444455556666' };
const environment = {
  image: 'registry.example/sendense-nutanix:0.1.0',
  credentialsSecret: { name: 'prism-credentials', usernameKey: 'username', passwordKey: 'password' },
  caSecret: { name: 'prism-ca', key: 'ca.crt' },
  repositoryClaim: 'backups',
};
const diskRequest: DiskRequestInput = {
  apiVersion: 'sendense.io/mover-request/v1',
  kind: 'disk',
  run: { namespace: 'backups', name: owner.name },
  prism: { endpoint: 'https://pc.example.test:9440' },
  repository: { path: 'nutanix/lab' },
  vm: { uuid: 'vm-uuid', name: 'web-01', clusterUuid: 'cluster-uuid' },
  pointId: '20261126T201500Z-3fa2c1',
  parentPointId: null,
  createdAt: '2026-11-26T20:15:00.000Z',
  recoveryPoint: { id: 'rp-1', generation: 'v4', name: 'sendense-20261126T201500Z-3fa2c1', vmUuid: 'vm-uuid', consistency: 'CRASH_CONSISTENT', disks: [{ diskUuid: 'd1' }] },
  disk: { uuid: 'd1', index: 1, busType: 'SCSI', deviceIndex: 1, sizeBytes: 16 * 1024 * 1024 },
  statusIndex: 1,
  initiatorName: 'iqn.2026-11.io.sendense:mover',
};

describe('export Job builder', () => {
  it('builds a disk Job that Kubernetes never retries, locked down, with the request, credentials and repository', () => {
    const job = buildDiskJob(owner, diskRequest, environment);
    expect(job.metadata?.name).toBe(`${owner.name}-disk-1`);
    expect(job.metadata?.ownerReferences).toEqual([expect.objectContaining({ kind: 'VMBackupRun', uid: owner.uid, controller: true })]);
    const spec = job.spec!;
    expect(spec.backoffLimit).toBe(0);
    expect(spec.podFailurePolicy?.rules.find((r) => r.action === 'FailJob')?.onExitCodes?.values).toEqual([...permanentExitCodes]);
    const pod = spec.template.spec!;
    expect(pod.restartPolicy).toBe('Never');
    expect(pod.serviceAccountName).toBe(moverServiceAccount);
    expect(buildDiskJob(owner, diskRequest, { ...environment, serviceAccountName: 'backup-mover' }).spec?.template.spec?.serviceAccountName).toBe('backup-mover');
    expect(pod.securityContext?.runAsNonRoot).toBe(true);
    const [container] = pod.containers;
    expect(container?.command).toEqual(['sendense-nutanix', 'mover', 'disk']);
    expect(container?.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
    expect(container?.resources?.limits).toBeDefined();
    const env = Object.fromEntries((container?.env ?? []).map((e) => [e.name, e]));
    // The request is parsed back with the mover's own schema: defaults are filled in by the builder.
    const request = DiskRequestSchema.parse(JSON.parse(env[moverRequestEnv]?.value ?? 'null'));
    expect(request.repository).toEqual({ root: '/repository', path: 'nutanix/lab' });
    expect(env.NUTANIX_PASSWORD?.valueFrom?.secretKeyRef).toEqual({ name: 'prism-credentials', key: 'password' });
    expect(env.NUTANIX_CA_PEM?.valueFrom?.secretKeyRef).toEqual({ name: 'prism-ca', key: 'ca.crt' });
    expect(container?.volumeMounts?.map((m) => m.mountPath).sort()).toEqual(['/repository', '/tmp']);
    expect(pod.volumes?.find((v) => v.name === 'repository')?.persistentVolumeClaim?.claimName).toBe('backups');
  });

  it('refuses an invalid request when building, naming the field', () => {
    expect(() => buildDiskJob(owner, { ...diskRequest, repository: { path: '../escape' } }, environment)).toThrow(/repository/);
  });

  it('gives the cleanup Job no Prism credentials', () => {
    const job = buildCleanupJob(owner, { apiVersion: 'sendense.io/mover-request/v1', kind: 'cleanup', run: diskRequest.run, repository: {}, vm: diskRequest.vm, pointId: diskRequest.pointId }, environment);
    const names = job.spec?.template.spec?.containers[0]?.env?.map((e) => e.name);
    expect(names).toEqual([moverRequestEnv]);
  });

  it('keeps Job names within 63 characters and distinct per disk', () => {
    const long = 'a'.repeat(70);
    expect(jobName(long, 'commit').length).toBeLessThanOrEqual(63);
    expect(diskJobName(long, 1)).not.toBe(diskJobName(long, 2));
    expect(diskJobName(long, 1)).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
  });
});
