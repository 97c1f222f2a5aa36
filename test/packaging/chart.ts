/**
 * The Helm chart for tests: render it with the real helm, or install it into a namespace of the test bed so e2e tests
 * run the operator and the movers under exactly the chart's ServiceAccounts and Roles (one source of RBAC truth).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { requireTestbedBinaries, type Testbed } from '../support/testbed.ts';
import { chartDir, parseManifests, type Manifest } from './manifests.ts';

const execFileAsync = promisify(execFile);

/** Chart values (checked by the chart's values.schema.json when rendered). */
export type ChartValues = Record<string, unknown>;

export interface RenderOptions {
  /** Release namespace: the operator's objects go there (and everything else when values.watchNamespace is unset). */
  namespace: string;
  values?: ChartValues;
  /** Include the CRDs of the chart's crds/ folder (default false). */
  includeCrds?: boolean;
  signal?: AbortSignal;
}

/** `helm template sendense-nutanix helm/sendense-nutanix` with these values: the YAML text. */
export async function renderChart(options: RenderOptions): Promise<string> {
  const { helm } = await requireTestbedBinaries();
  const dir = await mkdtemp(join(tmpdir(), 'sendense-render-'));
  try {
    const valuesFile = join(dir, 'values.json');
    await writeFile(valuesFile, JSON.stringify(options.values ?? {}));
    const args = ['template', 'sendense-nutanix', chartDir, '--namespace', options.namespace, '--values', valuesFile];
    if (options.includeCrds) args.push('--include-crds');
    // helm wants writable cache/config dirs; keep them out of $HOME.
    const env = { ...process.env, HELM_CACHE_HOME: dir, HELM_CONFIG_HOME: dir, HELM_DATA_HOME: dir };
    const { stdout } = await execFileAsync(helm, args, { signal: options.signal ?? AbortSignal.timeout(60_000), env });
    return stdout;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface InstalledChart {
  /** Every object applied, as rendered. */
  objects: Manifest[];
  /** Name of the operator's ServiceAccount in `namespace` (for testbed.kubeconfigFor). */
  operatorServiceAccount: string;
  /** Name of the export Jobs' ServiceAccount in the watched namespace. */
  moverServiceAccount: string;
}

/**
 * Renders the chart for `namespace` and applies it with the real kubectl (server-side): creates the namespace when
 * missing (a different values.watchNamespace must exist already), and with includeCrds also the CRDs, waiting until
 * they are Established. The Deployment is applied too; on the local test bed nothing runs it.
 */
export async function installChart(testbed: Testbed, options: RenderOptions): Promise<InstalledChart> {
  const signal = options.signal ?? AbortSignal.timeout(120_000);
  const { kubectl } = await requireTestbedBinaries();
  const run = (...args: string[]) => execFileAsync(kubectl, ['--kubeconfig', testbed.kubeconfigAdmin, ...args], { signal });
  const rendered = await renderChart({ ...options, signal });
  const objects = parseManifests(rendered);

  const namespaceObject = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: options.namespace } };
  const dir = await mkdtemp(join(tmpdir(), 'sendense-install-'));
  try {
    const file = join(dir, 'install.yaml');
    await writeFile(file, `${JSON.stringify(namespaceObject)}\n---\n${rendered}`);
    await run('apply', '--server-side', '--force-conflicts', '--field-manager=sendense-tests', '-f', file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const crds = objects.filter((o) => o.kind === 'CustomResourceDefinition').map((o) => `crd/${o.metadata.name}`);
  if (crds.length > 0) await run('wait', '--for=condition=Established', '--timeout=60s', ...crds);

  const accounts = objects.filter((o) => o.kind === 'ServiceAccount');
  const byComponent = (component: string) => {
    const account = accounts.find((a) => a.metadata.labels?.['app.kubernetes.io/component'] === component);
    if (!account) throw new Error(`the chart rendered no ServiceAccount of component ${component}`);
    return account.metadata.name;
  };
  return { objects, operatorServiceAccount: byComponent('operator'), moverServiceAccount: byComponent('mover') };
}
