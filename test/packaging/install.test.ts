/**
 * manifests/install.yaml and manifests/examples/ on the real kube-apiserver test bed (or the cluster named by
 * SENDENSE_E2E_KUBECONFIG): a plain server-side `kubectl apply` installs everything, the operator's and the mover's
 * ServiceAccounts can do exactly what their Roles grant, and the example CRs are valid against the generated CRDs.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nutanixCluster } from '../../src/crds/nutanix-cluster.ts';
import { vmBackupPolicy } from '../../src/crds/vm-backup-policy.ts';
import { vmBackupRun } from '../../src/crds/vm-backup-run.ts';
import { requireTestbedBinaries, startTestbed, type Testbed } from '../support/testbed.ts';
import { examplesDir, installYamlPath } from './manifests.ts';

const execFileAsync = promisify(execFile);
const namespace = 'sendense-system';
const operatorAccount = `system:serviceaccount:${namespace}:sendense-nutanix`;
const moverAccount = `system:serviceaccount:${namespace}:sendense-nutanix-mover`;

/** `kubectl auth can-i` arguments (verb, resource, flags) and the answer the chart's RBAC must give. */
type Check = [verb: string, resource: string, expected: boolean, ...flags: string[]];

const operatorChecks: Check[] = [
  ['watch', 'nutanixclusters.backup.sendense.io', true],
  ['list', 'vmbackuppolicies.backup.sendense.io', true],
  ['create', 'vmbackupruns.backup.sendense.io', true],
  ['delete', 'vmbackupruns.backup.sendense.io', true],
  ['patch', 'vmbackupruns.backup.sendense.io', true],
  ['patch', 'vmbackupruns.backup.sendense.io', true, '--subresource=status'],
  ['update', 'nutanixclusters.backup.sendense.io', true, '--subresource=status'],
  ['update', 'vmbackupruns.backup.sendense.io', true, '--subresource=finalizers'],
  ['get', 'secrets', true],
  ['watch', 'persistentvolumeclaims', true],
  ['list', 'pods', true],
  ['create', 'jobs.batch', true],
  ['delete', 'jobs.batch', true],
  ['create', 'events.events.k8s.io', true],
  ['update', 'leases.coordination.k8s.io', true],
  // Denied: nothing beyond the design's table.
  ['create', 'nutanixclusters.backup.sendense.io', false],
  ['delete', 'vmbackuppolicies.backup.sendense.io', false],
  ['patch', 'nutanixclusters.backup.sendense.io', false],
  ['create', 'secrets', false],
  ['update', 'secrets', false],
  ['create', 'pods', false],
  ['update', 'jobs.batch', false],
  ['get', 'configmaps', false],
  ['create', 'events', false],
  ['delete', 'leases.coordination.k8s.io', false],
  ['list', 'secrets', false, '--namespace=default'],
  ['list', 'vmbackupruns.backup.sendense.io', false, '--namespace=default'],
  ['list', 'nodes', false],
  ['create', 'clusterroles.rbac.authorization.k8s.io', false],
  ['create', 'rolebindings.rbac.authorization.k8s.io', false],
];

const moverChecks: Check[] = [
  ['get', 'vmbackupruns.backup.sendense.io', true],
  ['patch', 'vmbackupruns.backup.sendense.io', true, '--subresource=status'],
  ['list', 'vmbackupruns.backup.sendense.io', false],
  ['patch', 'vmbackupruns.backup.sendense.io', false],
  ['update', 'vmbackupruns.backup.sendense.io', false, '--subresource=status'],
  ['get', 'vmbackuppolicies.backup.sendense.io', false],
  ['get', 'secrets', false],
  ['create', 'jobs.batch', false],
  ['get', 'vmbackupruns.backup.sendense.io', false, '--namespace=default'],
];

describe('manifests/install.yaml and the examples on a real kube-apiserver', () => {
  let testbed: Testbed;
  let kubectlPath: string;
  const kubectlAs = async (kubeconfig: string, ...args: string[]) =>
    (await execFileAsync(kubectlPath, ['--kubeconfig', kubeconfig, ...args], { signal: AbortSignal.timeout(90_000) })).stdout;
  const kubectl = (...args: string[]) => kubectlAs(testbed.kubeconfigAdmin, ...args);

  /** The apiserver's answer to `kubectl auth can-i` (exit status 1 with "no" is an answer, not an error). */
  async function canI(account: string, [verb, resource, , ...flags]: Check): Promise<boolean> {
    try {
      return (await kubectl('auth', 'can-i', verb, resource, `--as=${account}`, `--namespace=${namespace}`, ...flags)).trim() === 'yes';
    } catch (err) {
      const stdout = String((err as { stdout?: unknown }).stdout ?? '').trim();
      if (stdout === 'no') return false;
      throw err;
    }
  }

  beforeAll(async () => {
    kubectlPath = (await requireTestbedBinaries()).kubectl;
    testbed = await startTestbed({ rbac: true });
    await kubectl('apply', '--server-side', '--field-manager=sendense-packaging-test', '-f', installYamlPath);
    await kubectl('wait', '--for=condition=Established', '--timeout=60s', 'crd/nutanixclusters.backup.sendense.io', 'crd/vmbackuppolicies.backup.sendense.io', 'crd/vmbackupruns.backup.sendense.io');
  });

  afterAll(async () => {
    await testbed?.stop();
  });

  it('installs every object of the rendered chart', async () => {
    const names = (await kubectl('get', '--namespace', namespace, '-o', 'name', 'deployment,serviceaccount,role,rolebinding,service')).trim().split('\n');
    expect(names).toEqual(
      expect.arrayContaining([
        'deployment.apps/sendense-nutanix',
        'serviceaccount/sendense-nutanix',
        'serviceaccount/sendense-nutanix-mover',
        'role.rbac.authorization.k8s.io/sendense-nutanix',
        'role.rbac.authorization.k8s.io/sendense-nutanix-mover',
        'rolebinding.rbac.authorization.k8s.io/sendense-nutanix',
        'rolebinding.rbac.authorization.k8s.io/sendense-nutanix-mover',
        'service/sendense-nutanix-metrics',
      ]),
    );
    expect((await kubectl('get', 'namespace', namespace, '-o', 'jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}')).trim()).toBe('baseline');
  });

  it('lets the operator ServiceAccount do exactly what its Role grants', async () => {
    const answers = await Promise.all(operatorChecks.map(async (check) => [check.join(' '), await canI(operatorAccount, check)] as const));
    expect(Object.fromEntries(answers)).toEqual(Object.fromEntries(operatorChecks.map((check) => [check.join(' '), check[2]])));
  });

  it('lets the mover ServiceAccount only read its run and patch its status', async () => {
    const answers = await Promise.all(moverChecks.map(async (check) => [check.join(' '), await canI(moverAccount, check)] as const));
    expect(Object.fromEntries(answers)).toEqual(Object.fromEntries(moverChecks.map((check) => [check.join(' '), check[2]])));
  });

  it('authenticates the operator with a real ServiceAccount token: allowed reads work, others are forbidden', async () => {
    const kubeconfig = await testbed.kubeconfigFor('sendense-nutanix', namespace);
    expect(await kubectlAs(kubeconfig, 'auth', 'whoami', '-o', 'jsonpath={.status.userInfo.username}')).toBe(operatorAccount);
    await expect(kubectlAs(kubeconfig, 'get', '--namespace', namespace, 'vmbackupruns,vmbackuppolicies,nutanixclusters,jobs,secrets')).resolves.toBeTypeOf('string');
    const refusal = await kubectlAs(kubeconfig, 'get', '--namespace', namespace, 'configmaps').then(
      () => 'allowed',
      (err: unknown) => String((err as { stderr?: unknown }).stderr ?? err),
    );
    expect(refusal).toMatch(/forbidden: User "system:serviceaccount:sendense-system:sendense-nutanix" cannot list resource "configmaps"/);
  });

  it('accepts the example CRs; they read back through the zod schemas with the example values', async () => {
    await kubectl('apply', '--server-side', '--field-manager=sendense-packaging-test', '--namespace', namespace, '-f', examplesDir);
    const read = async (resource: string) => JSON.parse(await kubectl('get', '--namespace', namespace, resource, '-o', 'json')) as unknown;

    const cluster = nutanixCluster.parse(await read('ntnx/lab'));
    expect(cluster.spec.credentialsSecretRef).toEqual({ name: 'prism-credentials', usernameKey: 'username', passwordKey: 'password' });
    expect(cluster.spec.insecureSkipTLSVerify).toBe(false);
    const policy = vmBackupPolicy.parse(await read('vmbp/nightly'));
    expect(policy.spec).toMatchObject({
      clusterRef: { name: 'lab' },
      selector: { vmNames: ['vm-0001'] },
      schedule: '30 1 * * *',
      fullBackup: { everyDays: 7 },
      retention: { keepLast: 7, daily: 14, weekly: 8, monthly: 6 },
      repository: { persistentVolumeClaim: { claimName: 'backup-repository', path: 'nutanix/lab' } },
    });
    const claim = JSON.parse(await kubectl('get', '--namespace', namespace, 'pvc/backup-repository', '-o', 'jsonpath={.spec.resources.requests}')) as unknown;
    expect(claim).toEqual({ storage: '500Gi' });
    expect((await kubectl('get', '--namespace', namespace, 'secret', '-o', 'name')).split('\n')).toEqual(
      expect.arrayContaining(['secret/prism-credentials', 'secret/prism-ca']),
    );

    // "Run now" uses generateName, so it is created, not applied; a server-side dry run validates it.
    const run = vmBackupRun.parse(
      JSON.parse(await kubectl('create', '--dry-run=server', '--namespace', namespace, '-o', 'json', '-f', join(examplesDir, 'run-now/vm-backup-run.yaml'))),
    );
    expect(run.metadata.name).toMatch(/^vm-0001-now-/);
    expect(run.spec).toMatchObject({ policyRef: { name: 'nightly' }, vm: { name: 'vm-0001' }, type: 'auto' });
  });
});
