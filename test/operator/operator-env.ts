/**
 * An operator test environment on the real test bed: CRDs applied, a fresh namespace, and the operator's
 * ServiceAccount bound to the namespaced Role of the operator design, so the runtime and controllers run with
 * exactly those rights (a missing permission fails the test with 403). Until the Helm chart's RBAC templates
 * exist, the Role is declared here; then these tests switch to the rendered chart.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { apiGroup } from '../../src/crds/common.ts';
import { customResourceKinds, defaultCrdDir } from '../../src/crds/generate.ts';
import { KubeApi } from '../../src/operator/kube.ts';
import { requireTestbedBinaries, startTestbed, type Testbed } from '../support/testbed.ts';

const execFileAsync = promisify(execFile);

export const operatorServiceAccount = 'sendense-nutanix-operator';

/** The operator Role of the design (docs/operator.md), verb for verb. */
export const operatorRoleRules = [
  { apiGroups: [apiGroup], resources: ['nutanixclusters', 'vmbackuppolicies', 'vmbackupruns'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: [apiGroup], resources: ['vmbackupruns'], verbs: ['create', 'delete'] },
  { apiGroups: [apiGroup], resources: ['nutanixclusters/status', 'vmbackuppolicies/status', 'vmbackupruns/status'], verbs: ['get', 'patch', 'update'] },
  { apiGroups: [apiGroup], resources: ['nutanixclusters/finalizers', 'vmbackuppolicies/finalizers', 'vmbackupruns/finalizers'], verbs: ['update'] },
  { apiGroups: [''], resources: ['secrets', 'persistentvolumeclaims', 'pods'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: ['batch'], resources: ['jobs'], verbs: ['get', 'list', 'watch', 'create', 'delete'] },
  { apiGroups: ['events.k8s.io'], resources: ['events'], verbs: ['create', 'patch'] },
  { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] },
];

export interface OperatorEnv {
  testbed: Testbed;
  namespace: string;
  /** cluster-admin access, for the test's own setup and checks. */
  admin: KubeApi;
  /** A fresh API client authenticated as the operator's ServiceAccount (one per Manager in a test). */
  operatorApi(): Promise<KubeApi>;
  kubectl(...args: string[]): Promise<string>;
  /** Applies objects (YAML documents) as cluster admin. */
  apply(objects: object[]): Promise<void>;
  stop(): Promise<void>;
}

export async function startOperatorEnv(prefix: string): Promise<OperatorEnv> {
  const binaries = await requireTestbedBinaries();
  const testbed = await startTestbed({ rbac: true });
  const dir = await mkdtemp(join(tmpdir(), `${prefix}-`));
  const namespace = `${prefix}-${randomBytes(4).toString('hex')}`;
  const kubectl = async (...args: string[]): Promise<string> =>
    (await execFileAsync(binaries.kubectl, ['--kubeconfig', testbed.kubeconfigAdmin, ...args])).stdout;
  let applied = 0;
  const apply = async (objects: object[]): Promise<void> => {
    const file = join(dir, `apply-${applied++}.yaml`);
    await writeFile(file, objects.map((o) => stringify(o)).join('---\n'));
    await kubectl('apply', '--server-side', '-f', file);
  };
  try {
    await kubectl('apply', '-f', defaultCrdDir);
    await kubectl('wait', '--for=condition=Established', '--timeout=60s', ...customResourceKinds.map((k) => `crd/${k.plural}.${apiGroup}`));
    await apply([
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace } },
      { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: operatorServiceAccount, namespace } },
      { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'Role', metadata: { name: operatorServiceAccount, namespace }, rules: operatorRoleRules },
      {
        apiVersion: 'rbac.authorization.k8s.io/v1',
        kind: 'RoleBinding',
        metadata: { name: operatorServiceAccount, namespace },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: operatorServiceAccount },
        subjects: [{ kind: 'ServiceAccount', name: operatorServiceAccount, namespace }],
      },
    ]);
  } catch (err) {
    await testbed.stop();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    testbed,
    namespace,
    admin: KubeApi.fromKubeconfig(testbed.kubeconfigAdmin),
    operatorApi: async () => KubeApi.fromKubeconfig(await testbed.kubeconfigFor(operatorServiceAccount, namespace)),
    kubectl,
    apply,
    stop: async () => {
      await testbed.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Polls `check` until it returns a value (not undefined) or `timeoutMs` passes; the last error explains a timeout. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last instanceof Error ? last.message : String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
