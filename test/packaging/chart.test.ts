/**
 * The Helm chart, checked with the real helm (built by scripts/testbed/build-binaries.sh): lint (also --strict),
 * template with the default values and with a second values set, values.schema.json rejecting bad values, and
 * manifests/install.yaml matching a fresh render so CI fails when it is stale.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireTestbedBinaries } from '../support/testbed.ts';
import { renderChart } from './chart.ts';
import {
  chartDir,
  deployment,
  envOf,
  findObject,
  installYamlPath,
  manifest,
  parseManifests,
  renderScript,
  repoRoot,
  role,
  roleBinding,
  service,
  serviceAccount,
  serviceMonitor,
} from './manifests.ts';

const execFileAsync = promisify(execFile);

/** The operator's Role as docs/operations.md tables it: the one source of RBAC truth the e2e tests run under. */
const operatorRules = [
  { apiGroups: ['backup.sendense.io'], resources: ['nutanixclusters', 'vmbackuppolicies', 'vmbackupruns'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: ['backup.sendense.io'], resources: ['vmbackupruns'], verbs: ['create', 'delete'] },
  { apiGroups: ['backup.sendense.io'], resources: ['vmbackuppolicies', 'vmbackupruns'], verbs: ['patch', 'update'] },
  {
    apiGroups: ['backup.sendense.io'],
    resources: ['nutanixclusters/status', 'vmbackuppolicies/status', 'vmbackupruns/status'],
    verbs: ['get', 'patch', 'update'],
  },
  {
    apiGroups: ['backup.sendense.io'],
    resources: ['nutanixclusters/finalizers', 'vmbackuppolicies/finalizers', 'vmbackupruns/finalizers'],
    verbs: ['update'],
  },
  { apiGroups: [''], resources: ['secrets', 'persistentvolumeclaims', 'pods'], verbs: ['get', 'list', 'watch'] },
  { apiGroups: ['batch'], resources: ['jobs'], verbs: ['get', 'list', 'watch', 'create', 'delete'] },
  { apiGroups: ['events.k8s.io'], resources: ['events'], verbs: ['create', 'patch'] },
];
const leaseRule = { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] };
const moverRules = [
  { apiGroups: ['backup.sendense.io'], resources: ['vmbackupruns'], verbs: ['get'] },
  { apiGroups: ['backup.sendense.io'], resources: ['vmbackupruns/status'], verbs: ['get', 'patch'] },
];

describe('Helm chart helm/sendense-nutanix', () => {
  let helm: (...args: string[]) => Promise<string>;
  let workDir: string;
  /** helm's error output for a command that must fail. */
  const refusal = async (...args: string[]): Promise<string> => {
    try {
      await helm(...args);
    } catch (err) {
      // helm lint prints its findings on stdout, template its error on stderr.
      const { stdout, stderr } = err as { stdout?: unknown; stderr?: unknown };
      return `${String(stdout ?? '')}${String(stderr ?? err)}`;
    }
    throw new Error(`helm ${args.join(' ')} succeeded but should have failed`);
  };

  beforeAll(async () => {
    const binaries = await requireTestbedBinaries();
    helm = async (...args) => (await execFileAsync(binaries.helm, args, { signal: AbortSignal.timeout(60_000), env: { ...process.env, HELM_CACHE_HOME: workDir, HELM_CONFIG_HOME: workDir, HELM_DATA_HOME: workDir } })).stdout;
    workDir = await mkdtemp(join(tmpdir(), 'sendense-chart-'));
  });

  afterAll(async () => {
    if (workDir) await rm(workDir, { recursive: true, force: true });
  });

  it('passes helm lint, also with --strict', async () => {
    expect(await helm('lint', chartDir)).toContain('1 chart(s) linted, 0 chart(s) failed');
    expect(await helm('lint', '--strict', chartDir)).toContain('1 chart(s) linted, 0 chart(s) failed');
  });

  it('renders the default install: namespaced RBAC, hardened Deployment, metrics Service, no ServiceMonitor', async () => {
    const objects = parseManifests(await renderChart({ namespace: 'sendense-system' }));
    expect(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
      'Deployment/sendense-nutanix',
      'Role/sendense-nutanix',
      'Role/sendense-nutanix-mover',
      'RoleBinding/sendense-nutanix',
      'RoleBinding/sendense-nutanix-mover',
      'Service/sendense-nutanix-metrics',
      'ServiceAccount/sendense-nutanix',
      'ServiceAccount/sendense-nutanix-mover',
    ]);
    for (const object of objects) expect(object.metadata.namespace, `${object.kind}/${object.metadata.name}`).toBe('sendense-system');
    expect(objects.some((o) => o.kind === 'ClusterRole' || o.kind === 'ClusterRoleBinding')).toBe(false);

    expect(findObject(objects, 'Role', 'sendense-nutanix', role).rules).toEqual([...operatorRules, leaseRule]);
    expect(findObject(objects, 'Role', 'sendense-nutanix-mover', role).rules).toEqual(moverRules);
    expect(findObject(objects, 'RoleBinding', 'sendense-nutanix', roleBinding).subjects).toEqual([{ kind: 'ServiceAccount', name: 'sendense-nutanix', namespace: 'sendense-system' }]);
    expect(findObject(objects, 'RoleBinding', 'sendense-nutanix-mover', roleBinding).subjects).toEqual([
      { kind: 'ServiceAccount', name: 'sendense-nutanix-mover', namespace: 'sendense-system' },
    ]);

    const operator = findObject(objects, 'Deployment', 'sendense-nutanix', deployment);
    const pod = operator.spec.template.spec;
    expect(pod.serviceAccountName).toBe('sendense-nutanix');
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65532, seccompProfile: { type: 'RuntimeDefault' } });
    const [container] = pod.containers;
    expect(container.image).toBe('ghcr.io/sendense/sendense-nutanix:0.1.0');
    expect(container.command).toEqual(['sendense-nutanix', 'operator']);
    expect(container.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    expect(container.ports).toEqual([
      { name: 'metrics', containerPort: 8080, protocol: 'TCP' },
      { name: 'health', containerPort: 8081, protocol: 'TCP' },
    ]);
    expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'health' });
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'health' });
    expect(container.resources.requests).toEqual({ cpu: '50m', memory: '192Mi' });
    expect(container.volumeMounts).toEqual([{ name: 'tmp', mountPath: '/tmp' }]);

    const env = envOf(container);
    expect(env).toEqual({
      WATCH_NAMESPACE: 'sendense-system',
      POD_NAMESPACE: { fieldRef: { fieldPath: 'metadata.namespace' } },
      POD_NAME: { fieldRef: { fieldPath: 'metadata.name' } },
      LOG_LEVEL: 'info',
      SENDENSE_METRICS_PORT: '8080',
      SENDENSE_HEALTH_PORT: '8081',
      SENDENSE_MOVER_IMAGE: 'ghcr.io/sendense/sendense-nutanix:0.1.0',
      SENDENSE_MOVER_IMAGE_PULL_POLICY: 'IfNotPresent',
      SENDENSE_MOVER_SERVICE_ACCOUNT: 'sendense-nutanix-mover',
      SENDENSE_MOVER_RESOURCES: expect.any(String),
      SENDENSE_MOVER_ACTIVE_DEADLINE_SECONDS: '86400',
      SENDENSE_MOVER_TTL_SECONDS_AFTER_FINISHED: '3600',
    });
    expect(JSON.parse(String(env.SENDENSE_MOVER_RESOURCES))).toEqual({ requests: { cpu: '500m', memory: '256Mi' }, limits: { memory: '1Gi' } });

    const metricsService = findObject(objects, 'Service', 'sendense-nutanix-metrics', service);
    expect(metricsService.spec.ports).toEqual([{ name: 'metrics', port: 8080, targetPort: 'metrics', protocol: 'TCP' }]);
    expect(metricsService.spec.selector).toEqual(operator.spec.selector.matchLabels);
    expect(operator.spec.template.metadata.labels).toMatchObject(operator.spec.selector.matchLabels);
  });

  it('renders a second values set: another watched namespace, two replicas, ServiceMonitor, own mover image', async () => {
    const objects = parseManifests(
      await renderChart({
        namespace: 'sendense-system',
        values: {
          watchNamespace: 'backups',
          replicas: 2,
          logLevel: 'debug',
          image: { repository: 'registry.example.com/sendense', tag: '1.2.3', pullPolicy: 'Always' },
          imagePullSecrets: [{ name: 'regcred' }],
          metrics: { port: 9090, serviceMonitor: { enabled: true, interval: '15s', labels: { release: 'prometheus' } } },
          health: { port: 9091 },
          mover: {
            image: { repository: 'registry.example.com/sendense-mover', tag: '1.2.4' },
            serviceAccount: { name: 'backup-mover' },
            resources: { requests: { cpu: 1, memory: '512Mi' } },
            activeDeadlineSeconds: 7200,
            ttlSecondsAfterFinished: 600,
          },
        },
      }),
    );
    const where = (kind: string, name: string) => findObject(objects, kind, name, manifest).metadata.namespace;

    // The operator lives in the release namespace; what it manages, and the mover, live in the watched one.
    expect(where('Deployment', 'sendense-nutanix')).toBe('sendense-system');
    expect(where('ServiceAccount', 'sendense-nutanix')).toBe('sendense-system');
    expect(where('Role', 'sendense-nutanix')).toBe('backups');
    expect(where('ServiceAccount', 'backup-mover')).toBe('backups');
    expect(where('Role', 'backup-mover')).toBe('backups');
    expect(findObject(objects, 'Role', 'sendense-nutanix', role).rules).toEqual(operatorRules);
    expect(findObject(objects, 'RoleBinding', 'sendense-nutanix', roleBinding).subjects).toEqual([{ kind: 'ServiceAccount', name: 'sendense-nutanix', namespace: 'sendense-system' }]);
    // The leader-election Lease stays beside the operator's Pods.
    expect(where('Role', 'sendense-nutanix-leader-election')).toBe('sendense-system');
    expect(findObject(objects, 'Role', 'sendense-nutanix-leader-election', role).rules[0]).toEqual(leaseRule);
    expect(findObject(objects, 'ServiceAccount', 'backup-mover', serviceAccount).imagePullSecrets).toEqual([{ name: 'regcred' }]);

    const operator = findObject(objects, 'Deployment', 'sendense-nutanix', deployment);
    expect(operator.spec.replicas).toBe(2);
    const [container] = operator.spec.template.spec.containers;
    expect(container.image).toBe('registry.example.com/sendense:1.2.3');
    expect(container.imagePullPolicy).toBe('Always');
    expect(container.ports.map((p) => p.containerPort)).toEqual([9090, 9091]);
    const env = envOf(container);
    expect(env).toMatchObject({
      WATCH_NAMESPACE: 'backups',
      LOG_LEVEL: 'debug',
      SENDENSE_METRICS_PORT: '9090',
      SENDENSE_HEALTH_PORT: '9091',
      SENDENSE_MOVER_IMAGE: 'registry.example.com/sendense-mover:1.2.4',
      SENDENSE_MOVER_IMAGE_PULL_POLICY: 'Always',
      SENDENSE_MOVER_SERVICE_ACCOUNT: 'backup-mover',
      SENDENSE_MOVER_ACTIVE_DEADLINE_SECONDS: '7200',
      SENDENSE_MOVER_TTL_SECONDS_AFTER_FINISHED: '600',
    });
    expect(JSON.parse(String(env.SENDENSE_MOVER_RESOURCES))).toEqual({ requests: { cpu: 1, memory: '512Mi' }, limits: { memory: '1Gi' } }) // helm merges maps with the defaults;

    const monitor = findObject(objects, 'ServiceMonitor', 'sendense-nutanix', serviceMonitor);
    expect(monitor.metadata.labels?.release).toBe('prometheus');
    expect(monitor.spec.endpoints).toEqual([{ port: 'metrics', path: '/metrics', interval: '15s', scrapeTimeout: '10s' }]);
    expect(monitor.spec.selector.matchLabels).toEqual(findObject(objects, 'Service', 'sendense-nutanix-metrics', service).spec.selector);
  });

  it('rejects values that break values.schema.json, naming the value', async () => {
    expect(await refusal('template', 'x', chartDir, '--set-string', 'replicas=2')).toContain("at '/replicas': got string, want integer");
    expect(await refusal('lint', '--strict', chartDir, '--set-string', 'replicas=2')).toContain("at '/replicas': got string, want integer");
    expect(await refusal('template', 'x', chartDir, '--set', 'replica=2')).toContain("additional properties 'replica' not allowed");
    expect(await refusal('template', 'x', chartDir, '--set', 'image.pullPolicy=Sometimes')).toContain("at '/image/pullPolicy'");
    expect(await refusal('template', 'x', chartDir, '--set', 'metrics.port=70000')).toContain("at '/metrics/port'");
    expect(await refusal('template', 'x', chartDir, '--set', 'mover.resources.limits.memory=lots')).toContain("at '/mover/resources/limits/memory'");
    expect(await refusal('template', 'x', chartDir, '--set', 'watchNamespace=Not_A_Namespace')).toContain("at '/watchNamespace'");
  });

  it('has a manifests/install.yaml identical to a fresh render (else run scripts/render-manifests.sh)', async () => {
    const fresh = join(workDir, 'install.yaml');
    await execFileAsync(renderScript, [fresh], { signal: AbortSignal.timeout(60_000), cwd: repoRoot });
    const [committed, rendered] = await Promise.all([readFile(installYamlPath, 'utf8'), readFile(fresh, 'utf8')]);
    expect(committed === rendered, 'manifests/install.yaml is stale: run scripts/render-manifests.sh and commit manifests/install.yaml').toBe(true);

    const objects = parseManifests(rendered);
    expect(objects[0]).toMatchObject({ kind: 'Namespace', metadata: { name: 'sendense-system' } });
    expect(objects.filter((o) => o.kind === 'CustomResourceDefinition').map((o) => o.metadata.name).sort()).toEqual([
      'nutanixclusters.backup.sendense.io',
      'vmbackuppolicies.backup.sendense.io',
      'vmbackupruns.backup.sendense.io',
    ]);
  });
});
