/**
 * The generated CRDs on the real kube-apiserver: installed with the real kubectl from the Helm chart's crds/ folder,
 * valid objects are accepted (defaults filled, read back through our zod schemas), invalid ones are rejected with
 * the offending field named, the status subresource and printer columns work.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { ApiException, CoreV1Api, CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { apiGroup, apiVersion, groupVersion } from '../../src/crds/common.ts';
import { customResourceKinds, defaultCrdDir } from '../../src/crds/generate.ts';
import { nutanixCluster } from '../../src/crds/nutanix-cluster.ts';
import { vmBackupPolicy } from '../../src/crds/vm-backup-policy.ts';
import { vmBackupRun, type VMBackupRunStatus } from '../../src/crds/vm-backup-run.ts';
import { requireTestbedBinaries, startTestbed, type Testbed } from '../support/testbed.ts';

const execFileAsync = promisify(execFile);

const plurals = { NutanixCluster: 'nutanixclusters', VMBackupPolicy: 'vmbackuppolicies', VMBackupRun: 'vmbackupruns' } as const;
type Kind = keyof typeof plurals;

const statusCause = z.object({ field: z.string().optional(), message: z.string(), reason: z.string().optional() });
const apiStatus = z.object({ message: z.string(), details: z.object({ causes: z.array(statusCause).optional() }).optional() });

const validSpecs = {
  NutanixCluster: { endpoint: 'https://pc.example.test:9440', credentialsSecretRef: { name: 'prism-credentials' } },
  VMBackupPolicy: {
    clusterRef: { name: 'lab' },
    selector: { namePattern: 'db-*' },
    schedule: '30 1 * * *',
    repository: { persistentVolumeClaim: { claimName: 'backups', path: 'nutanix/lab' } },
  },
  VMBackupRun: { policyRef: { name: 'nightly' }, vm: { name: 'db-01' } },
} satisfies Record<Kind, object>;

describe('generated CRDs on the real kube-apiserver', () => {
  let testbed: Testbed;
  let kubectl: (...args: string[]) => Promise<{ stdout: string; stderr: string }>;
  let objects: CustomObjectsApi;
  const namespace = `crds-${randomBytes(4).toString('hex')}`;

  const create = (kind: Kind, name: string, spec: object, status?: object) =>
    objects.createNamespacedCustomObject({
      group: apiGroup,
      version: apiVersion,
      namespace,
      plural: plurals[kind],
      body: { apiVersion: groupVersion, kind, metadata: { name }, spec, ...(status ? { status } : {}) },
    });
  const read = (kind: Kind, name: string): Promise<unknown> =>
    objects.getNamespacedCustomObject({ group: apiGroup, version: apiVersion, namespace, plural: plurals[kind], name });

  /** The apiserver's refusal of a call: HTTP status and the Status causes (field + message). */
  async function refusal(call: Promise<unknown>) {
    try {
      await call;
    } catch (err) {
      if (!(err instanceof ApiException)) throw err;
      const body = apiStatus.parse(typeof err.body === 'string' ? JSON.parse(err.body) : err.body);
      return { code: err.code, message: body.message, causes: body.details?.causes ?? [] };
    }
    throw new Error('the apiserver accepted an object that should have been rejected');
  }

  beforeAll(async () => {
    const binaries = await requireTestbedBinaries();
    testbed = await startTestbed({ rbac: true });
    kubectl = (...args) => execFileAsync(binaries.kubectl, ['--kubeconfig', testbed.kubeconfigAdmin, ...args]);
    await kubectl('apply', '-f', defaultCrdDir);
    await kubectl('wait', '--for=condition=Established', '--timeout=60s', ...customResourceKinds.map((k) => `crd/${k.plural}.${apiGroup}`));
    const config = new KubeConfig();
    config.loadFromFile(testbed.kubeconfigAdmin);
    await config.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: namespace } } });
    objects = config.makeApiClient(CustomObjectsApi);
  });

  afterAll(async () => {
    await testbed?.stop();
  });

  it('accepts valid objects, fills in the defaults, and they parse with the zod schemas', async () => {
    await create('NutanixCluster', 'lab', validSpecs.NutanixCluster);
    await create('VMBackupPolicy', 'nightly', validSpecs.VMBackupPolicy);
    await create('VMBackupRun', 'db-01-now', validSpecs.VMBackupRun);

    const cluster = nutanixCluster.parse(await read('NutanixCluster', 'lab'));
    expect(cluster.spec.insecureSkipTLSVerify).toBe(false);
    expect(cluster.spec.credentialsSecretRef).toEqual({ name: 'prism-credentials', usernameKey: 'username', passwordKey: 'password' });
    expect(cluster.spec.concurrency).toEqual({ maxVMs: 4, maxDisks: 8, prismRequestsPerSecond: 10 });

    const policy = vmBackupPolicy.parse(await read('VMBackupPolicy', 'nightly'));
    expect(policy.spec).toMatchObject({ suspend: false, consistency: 'auto', concurrencyPolicy: 'Forbid', fullBackup: { everyDays: 7 } });
    expect(policy.spec.retention).toEqual({ keepLast: 7, daily: 0, weekly: 0, monthly: 0 });

    const run = vmBackupRun.parse(await read('VMBackupRun', 'db-01-now'));
    expect(run.spec.type).toBe('auto');
  });

  const invalid: { what: string; kind: Kind; spec: object; field: string; says: string }[] = [
    {
      what: 'a plain-http endpoint',
      kind: 'NutanixCluster',
      spec: { ...validSpecs.NutanixCluster, endpoint: 'http://pc.example.test:9440' },
      field: 'spec.endpoint',
      says: 'https://',
    },
    {
      what: 'a CA and insecureSkipTLSVerify together',
      kind: 'NutanixCluster',
      spec: { ...validSpecs.NutanixCluster, caSecretRef: { name: 'prism-ca' }, insecureSkipTLSVerify: true },
      field: 'spec.insecureSkipTLSVerify',
      says: 'not both',
    },
    {
      what: 'fewer disks than VMs at once',
      kind: 'NutanixCluster',
      spec: { ...validSpecs.NutanixCluster, concurrency: { maxVMs: 8, maxDisks: 2 } },
      field: 'spec.concurrency.maxDisks',
      says: 'at least maxVMs',
    },
    {
      what: 'zero VMs at once',
      kind: 'NutanixCluster',
      spec: { ...validSpecs.NutanixCluster, concurrency: { maxVMs: 0 } },
      field: 'spec.concurrency.maxVMs',
      says: 'greater than or equal to 1',
    },
    {
      what: 'no credentials Secret',
      kind: 'NutanixCluster',
      spec: { endpoint: 'https://pc.example.test:9440' },
      field: 'spec.credentialsSecretRef',
      says: 'Required',
    },
    {
      what: 'a selector that selects nothing',
      kind: 'VMBackupPolicy',
      spec: { ...validSpecs.VMBackupPolicy, selector: { exclude: { vmNames: ['x'] } } },
      field: 'spec.selector',
      says: 'at least one of vmNames',
    },
    {
      what: 'a schedule that is not cron',
      kind: 'VMBackupPolicy',
      spec: { ...validSpecs.VMBackupPolicy, schedule: 'every night' },
      field: 'spec.schedule',
      says: 'should match',
    },
    {
      what: 'a retention that keeps nothing',
      kind: 'VMBackupPolicy',
      spec: { ...validSpecs.VMBackupPolicy, retention: { keepLast: 0 } },
      field: 'spec.retention',
      says: 'at least one restore point',
    },
    {
      what: 'a repository path escaping the volume',
      kind: 'VMBackupPolicy',
      spec: { ...validSpecs.VMBackupPolicy, repository: { persistentVolumeClaim: { claimName: 'backups', path: 'a/../../etc' } } },
      field: 'spec.repository.persistentVolumeClaim.path',
      says: 'must not contain ..',
    },
    {
      what: 'an unknown concurrencyPolicy',
      kind: 'VMBackupPolicy',
      spec: { ...validSpecs.VMBackupPolicy, concurrencyPolicy: 'Replace' },
      field: 'spec.concurrencyPolicy',
      says: 'Unsupported value',
    },
    {
      what: 'a run with neither policy nor cluster and repository',
      kind: 'VMBackupRun',
      spec: { vm: { name: 'db-01' }, clusterRef: { name: 'lab' } },
      field: 'spec',
      says: 'needs clusterRef and repository',
    },
    { what: 'a run naming no VM', kind: 'VMBackupRun', spec: { policyRef: { name: 'nightly' }, vm: {} }, field: 'spec.vm', says: 'by name or uuid' },
    {
      what: 'a malformed VM uuid',
      kind: 'VMBackupRun',
      spec: { policyRef: { name: 'nightly' }, vm: { uuid: 'not-a-uuid' } },
      field: 'spec.vm.uuid',
      says: 'should match',
    },
  ];

  it.each(invalid)('rejects $what, naming $field', async ({ kind, spec, field, says }) => {
    const { code, causes } = await refusal(create(kind, `bad-${randomBytes(3).toString('hex')}`, spec));
    expect(code).toBe(422);
    expect(causes).toContainEqual(expect.objectContaining({ field, message: expect.stringContaining(says) }));
  });

  it('keeps a run’s spec immutable', async () => {
    await create('VMBackupRun', 'immutable', validSpecs.VMBackupRun);
    const current = z.looseObject({ spec: z.looseObject({}) }).parse(await read('VMBackupRun', 'immutable'));
    const { code, causes } = await refusal(
      objects.replaceNamespacedCustomObject({
        group: apiGroup,
        version: apiVersion,
        namespace,
        plural: plurals.VMBackupRun,
        name: 'immutable',
        body: { ...current, spec: { ...current.spec, type: 'full' } },
      }),
    );
    expect(code).toBe(422);
    expect(causes).toContainEqual(expect.objectContaining({ field: 'spec', message: expect.stringContaining('immutable') }));
  });

  it('stores status only through the status subresource, validates it, and shows it in the printer columns', async () => {
    const status: VMBackupRunStatus = {
      phase: 'Succeeded',
      vm: { name: 'db-01', uuid: '0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9' },
      backupType: 'Incremental',
      backupTypeReason: 'previous restore point 2026-11-25 is usable',
      summary: { changed: '1.5 GiB', throughput: '180 MiB/s', duration: '2m10s' },
      conditions: [{ type: 'Ready', status: 'True', reason: 'Succeeded', message: 'restore point verified', lastTransitionTime: '2026-11-26T20:00:00Z' }],
    };
    // Status sent with a create is dropped: only the controller writes it, through /status.
    await create('VMBackupRun', 'with-status', validSpecs.VMBackupRun, status);
    expect(vmBackupRun.parse(await read('VMBackupRun', 'with-status')).status).toBeUndefined();

    const current = z.looseObject({}).parse(await read('VMBackupRun', 'with-status'));
    const replaceStatus = (body: object) =>
      objects.replaceNamespacedCustomObjectStatus({ group: apiGroup, version: apiVersion, namespace, plural: plurals.VMBackupRun, name: 'with-status', body });
    const bad = await refusal(replaceStatus({ ...current, status: { ...status, phase: 'Done' } }));
    expect(bad.causes).toContainEqual(expect.objectContaining({ field: 'status.phase', message: expect.stringContaining('Unsupported value') }));
    await replaceStatus({ ...current, status });
    expect(vmBackupRun.parse(await read('VMBackupRun', 'with-status')).status).toEqual(status);

    const table = (await kubectl('get', 'vmbr', 'with-status', '-n', namespace)).stdout.trim().split('\n');
    const [header, row] = table.map((line) => line.split(/\s{2,}/));
    expect(header).toEqual(['NAME', 'VM', 'TYPE', 'PHASE', 'CHANGED', 'THROUGHPUT', 'DURATION', 'AGE']);
    expect(row?.slice(0, 7)).toEqual(['with-status', 'db-01', 'Incremental', 'Succeeded', '1.5 GiB', '180 MiB/s', '2m10s']);
  });

  it('answers to the short names and the sendense category', async () => {
    const names = async (...args: string[]) => (await kubectl('get', ...args, '-n', namespace, '-o', 'name')).stdout.trim().split('\n');
    const all = await names('ntnx,vmbp,vmbr');
    expect(all).toEqual(expect.arrayContaining([`nutanixcluster.${apiGroup}/lab`, `vmbackuppolicy.${apiGroup}/nightly`, `vmbackuprun.${apiGroup}/db-01-now`]));
    expect(await names('sendense')).toEqual(expect.arrayContaining(all));
  });
});
