/**
 * manifests/install.yaml and manifests/examples/ on the real kube-apiserver test bed (or the cluster named by
 * SENDENSE_E2E_KUBECONFIG): a plain server-side `kubectl apply` installs everything, the operator's and the mover's
 * ServiceAccounts can do exactly what their Roles grant, and the example CRs are valid against the generated CRDs.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nutanixCluster } from '../../src/crds/nutanix-cluster.ts';
import { vmBackupPolicy } from '../../src/crds/vm-backup-policy.ts';
import { vmBackupRun } from '../../src/crds/vm-backup-run.ts';
import { requireTestbedBinaries, startTestbed, type Testbed } from '../support/testbed.ts';
import { installChart } from './chart.ts';
import { chartDir, examplesDir, installYamlPath } from './manifests.ts';

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
  let helmPath: string;
  let helmHome: string;
  const kubectlAs = async (kubeconfig: string, ...args: string[]) =>
    (await execFileAsync(kubectlPath, ['--kubeconfig', kubeconfig, ...args], { signal: AbortSignal.timeout(90_000) })).stdout;
  const kubectl = (...args: string[]) => kubectlAs(testbed.kubeconfigAdmin, ...args);

  /** The apiserver's answer to `kubectl auth can-i` (exit status 1 with "no" is an answer, not an error). */
  async function canI(account: string, [verb, resource, , ...flags]: Check, inNamespace = namespace): Promise<boolean> {
    try {
      return (await kubectl('auth', 'can-i', verb, resource, `--as=${account}`, `--namespace=${inNamespace}`, ...flags)).trim() === 'yes';
    } catch (err) {
      const stdout = String((err as { stdout?: unknown }).stdout ?? '').trim();
      if (stdout === 'no') return false;
      throw err;
    }
  }

  beforeAll(async () => {
    ({ kubectl: kubectlPath, helm: helmPath } = await requireTestbedBinaries());
    helmHome = await mkdtemp(join(tmpdir(), 'sendense-helm-'));
    testbed = await startTestbed({ rbac: true });
    await kubectl('apply', '--server-side', '--field-manager=sendense-packaging-test', '-f', installYamlPath);
    await kubectl('wait', '--for=condition=Established', '--timeout=60s', 'crd/nutanixclusters.backup.sendense.io', 'crd/vmbackuppolicies.backup.sendense.io', 'crd/vmbackupruns.backup.sendense.io');
  });

  afterAll(async () => {
    await testbed?.stop();
    if (helmHome) await rm(helmHome, { recursive: true, force: true });
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

  it('installs with the real helm in a second namespace that watches a third: rights follow the namespaces', async () => {
    const suffix = randomBytes(3).toString('hex');
    const [operatorNamespace, watchedNamespace] = [`ops-${suffix}`, `backups-${suffix}`];
    await kubectl('create', 'namespace', watchedNamespace);
    const helmEnv = { ...process.env, HELM_CACHE_HOME: helmHome, HELM_CONFIG_HOME: helmHome, HELM_DATA_HOME: helmHome };
    const { stdout: notes } = await execFileAsync(
      helmPath,
      ['install', 'sendense-nutanix', chartDir, '--kubeconfig', testbed.kubeconfigAdmin, '--namespace', operatorNamespace, '--create-namespace', '--set', `watchNamespace=${watchedNamespace}`],
      { signal: AbortSignal.timeout(90_000), env: helmEnv },
    );
    expect(notes).toContain(`It manages NutanixClusters, VMBackupPolicies and VMBackupRuns in namespace ${watchedNamespace} only.`);

    const operator = `system:serviceaccount:${operatorNamespace}:sendense-nutanix`;
    const mover = `system:serviceaccount:${watchedNamespace}:sendense-nutanix-mover`;
    const answers = {
      'operator lists runs in the watched namespace': await canI(operator, ['list', 'vmbackupruns.backup.sendense.io', true], watchedNamespace),
      'operator creates Jobs in the watched namespace': await canI(operator, ['create', 'jobs.batch', true], watchedNamespace),
      'operator updates its Lease in its own namespace': await canI(operator, ['update', 'leases.coordination.k8s.io', true], operatorNamespace),
      'operator lists runs in its own namespace': await canI(operator, ['list', 'vmbackupruns.backup.sendense.io', false], operatorNamespace),
      'operator reads Secrets in its own namespace': await canI(operator, ['get', 'secrets', false], operatorNamespace),
      'operator updates Leases in the watched namespace': await canI(operator, ['update', 'leases.coordination.k8s.io', false], watchedNamespace),
      'mover patches run status in the watched namespace': await canI(mover, ['patch', 'vmbackupruns.backup.sendense.io', true, '--subresource=status'], watchedNamespace),
      'mover reads runs in the operator namespace': await canI(mover, ['get', 'vmbackupruns.backup.sendense.io', false], operatorNamespace),
    };
    expect(answers).toEqual({
      'operator lists runs in the watched namespace': true,
      'operator creates Jobs in the watched namespace': true,
      'operator updates its Lease in its own namespace': true,
      'operator lists runs in its own namespace': false,
      'operator reads Secrets in its own namespace': false,
      'operator updates Leases in the watched namespace': false,
      'mover patches run status in the watched namespace': true,
      'mover reads runs in the operator namespace': false,
    });

    // A real cluster keeps what a test leaves behind; the local test bed is discarded whole.
    if (testbed.external) {
      await execFileAsync(helmPath, ['uninstall', 'sendense-nutanix', '--kubeconfig', testbed.kubeconfigAdmin, '--namespace', operatorNamespace], { signal: AbortSignal.timeout(90_000), env: helmEnv });
      await kubectl('delete', 'namespace', operatorNamespace, watchedNamespace, '--wait=false');
    }
  });

  it('installChart gives an e2e test the chart in its own namespace, with working ServiceAccount tokens', async () => {
    const own = `e2e-${randomBytes(3).toString('hex')}`;
    const installed = await installChart(testbed, { namespace: own, includeCrds: true });
    expect(installed).toMatchObject({ operatorServiceAccount: 'sendense-nutanix', moverServiceAccount: 'sendense-nutanix-mover' });
    const operatorConfig = await testbed.kubeconfigFor(installed.operatorServiceAccount, own);
    const moverConfig = await testbed.kubeconfigFor(installed.moverServiceAccount, own);
    const canList = (kubeconfig: string, resource: string, inNamespace: string) =>
      kubectlAs(kubeconfig, 'auth', 'can-i', 'list', resource, '--namespace', inNamespace).then(
        (out) => out.trim(),
        (err: unknown) => String((err as { stdout?: unknown }).stdout ?? err).trim(),
      );
    expect({
      operatorJobsHere: await canList(operatorConfig, 'jobs.batch', own),
      operatorJobsInSendenseSystem: await canList(operatorConfig, 'jobs.batch', namespace),
      moverRunsHere: await canList(moverConfig, 'vmbackupruns.backup.sendense.io', own),
    }).toEqual({ operatorJobsHere: 'yes', operatorJobsInSendenseSystem: 'no', moverRunsHere: 'no' });
  });
});
