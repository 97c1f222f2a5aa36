/**
 * The controller runtime on a real kube-apiserver, under the operator's ServiceAccount and Role: leader election
 * between two managers (only the leader reconciles; the standby takes over when the leader stops), the /metrics,
 * /healthz and /readyz endpoints, error classification (retryable → backoff, non-retryable → Ready=False + Event,
 * no hot loop), one worker per key, and the informer's watchdog relist and resync.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { groupVersion } from '../../src/crds/common.ts';
import { nutanixCluster } from '../../src/crds/nutanix-cluster.ts';
import { nutanixClusterController } from '../../src/controllers/nutanixcluster.ts';
import { AppError, ErrorCode } from '../../src/lib/errors.ts';
import { createLogger } from '../../src/lib/log.ts';
import type { ControllerDefinition } from '../../src/operator/controller.ts';
import { Informer } from '../../src/operator/informer.ts';
import { EventKind } from '../../src/operator/events.ts';
import { PatchType, kubeObject, kubeStatusOf } from '../../src/operator/kube.ts';
import { patchStatus } from '../../src/operator/status.ts';
import { microTime } from '../../src/operator/time.ts';
import { leaseType } from '../../src/operator/leader.ts';
import { Manager, type ManagerOptions } from '../../src/operator/manager.ts';
import type { OperatorMetrics } from '../../src/operator/metrics.ts';
import { nutanixClusterType, vmBackupPolicyType } from '../../src/operator/resources.ts';
import { eventually, operatorServiceAccount, startOperatorEnv, type OperatorEnv } from './operator-env.ts';

const log = createLogger({ name: 'runtime-test', level: 'warn' });
const leaseSchema = z.object({ spec: z.object({ holderIdentity: z.string().nullish(), leaseTransitions: z.number().nullish() }) });
const eventList = z.object({
  items: z.array(z.looseObject({ reason: z.string(), type: z.string(), note: z.string(), regarding: z.looseObject({ name: z.string() }), series: z.object({ count: z.number() }).optional() })),
});
const bin = join(import.meta.dirname, '../../bin/sendense-nutanix');

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Sum of a counter's values whose labels match. */
async function counter(metrics: OperatorMetrics, name: 'reconcileTotal' | 'reconcileErrors', labels: Record<string, string>): Promise<number> {
  const { values } = await metrics[name].get();
  return values.filter((v) => Object.entries(labels).every(([k, l]) => (v.labels as Record<string, string | number | undefined>)[k] === l)).reduce((sum, v) => sum + v.value, 0);
}

describe('operator runtime', () => {
  let env: OperatorEnv;
  const managers: Manager[] = [];

  const cluster = (name: string, endpoint = 'https://pc.invalid.test:9440') => ({
    apiVersion: groupVersion,
    kind: 'NutanixCluster',
    metadata: { name, namespace: env.namespace },
    spec: { endpoint, credentialsSecretRef: { name: `${name}-credentials` } },
  });
  const readyReason = async (name: string) => {
    const object = nutanixCluster.parse(await env.admin.get(nutanixClusterType, env.namespace, name, AbortSignal.timeout(10_000)));
    return object.status?.conditions?.find((c) => c.type === 'Ready')?.reason;
  };
  const newManager = async (identity: string, options: Partial<ManagerOptions> = {}): Promise<Manager> => {
    const manager = new Manager({
      api: await env.operatorApi(),
      namespace: env.namespace,
      log,
      identity,
      // Generous against a loaded machine (slow lease writes must not flap leadership); takeover in the tests is by release or by an expired foreign lease.
      leaderElection: { leaseDurationMs: 8000, renewDeadlineMs: 6000, retryPeriodMs: 500 },
      runner: { baseBackoffMs: 100, maxBackoffMs: 1000 },
      ...options,
    });
    managers.push(manager);
    return manager;
  };
  const stopAll = async () => {
    await Promise.all(managers.splice(0).map((m) => m.stop()));
  };

  beforeAll(async () => {
    env = await startOperatorEnv('runtime');
  });

  afterEach(stopAll);

  afterAll(async () => {
    await env?.stop();
  });

  it('only the leader reconciles; the standby takes over when it stops; metrics and probes tell which is which', async () => {
    const first = await newManager('operator-a', { metricsPort: 0, healthPort: 0, bindAddress: '127.0.0.1' });
    first.addController(nutanixClusterController());
    await first.start();
    await eventually('operator-a to lead', async () => (first.isLeader() ? true : undefined));

    const second = await newManager('operator-b', { metricsPort: 0, healthPort: 0, bindAddress: '127.0.0.1' });
    second.addController(nutanixClusterController());
    await second.start();
    await env.apply([cluster('le-one')]);
    expect(await eventually('le-one reconciled', async () => ((await readyReason('le-one')) === 'SecretNotFound' ? true : undefined))).toBe(true);

    // The status write is visible a moment before the reconcile (which records an Event after it) is counted.
    await eventually('operator-a to count its reconcile', async () => ((await counter(first.metrics, 'reconcileTotal', { controller: 'nutanixcluster' })) > 0 ? true : undefined));
    expect(second.isLeader()).toBe(false);
    expect(await counter(second.metrics, 'reconcileTotal', { controller: 'nutanixcluster' })).toBe(0);
    const lease = leaseSchema.parse(await env.admin.get(leaseType, env.namespace, 'sendense-nutanix-operator', AbortSignal.timeout(10_000)));
    expect(lease.spec.holderIdentity).toBe('operator-a');

    // Both are ready (informers synced, leadership known); the standby says so.
    const [firstPort] = first.ports;
    const [secondPort] = second.ports;
    const get = async (port: number | undefined, path: string) => {
      const response = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(10_000) });
      return { status: response.status, text: await response.text() };
    };
    expect(await get(firstPort, '/readyz')).toMatchObject({ status: 200, text: expect.stringContaining('leader election: leader') });
    expect(await get(secondPort, '/readyz')).toMatchObject({ status: 200, text: expect.stringContaining('leader election: standby') });
    expect((await get(secondPort, '/healthz')).status).toBe(200);
    const metrics = await get(firstPort, '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.text).toMatch(/^controller_runtime_reconcile_total\{controller="nutanixcluster",result="requeue_after"\} [1-9]\d*$/m);
    expect(metrics.text).toMatch(/^workqueue_depth\{name="nutanixcluster"\} \d+$/m);
    expect(metrics.text).toMatch(/^leader_election_master_status\{name="sendense-nutanix-operator"\} 1$/m);
    expect(metrics.text).toContain('# TYPE sendense_backup_attempt_total counter');
    expect(metrics.text).toContain('# TYPE sendense_backup_duration_seconds histogram');
    expect((await get(firstPort, '/nothing')).status).toBe(404);

    const index = managers.indexOf(first);
    managers.splice(index, 1);
    await first.stop();
    await eventually('operator-b to take over', async () => (second.isLeader() ? true : undefined));
    await env.apply([cluster('le-two')]);
    await eventually('le-two reconciled by operator-b', async () => ((await readyReason('le-two')) === 'SecretNotFound' ? true : undefined));
    await eventually('operator-b to count its reconciles', async () => ((await counter(second.metrics, 'reconcileTotal', { controller: 'nutanixcluster' })) > 0 ? true : undefined));
    const after = leaseSchema.parse(await env.admin.get(leaseType, env.namespace, 'sendense-nutanix-operator', AbortSignal.timeout(10_000)));
    expect(after.spec.holderIdentity).toBe('operator-b');
    expect(after.spec.leaseTransitions).toBeGreaterThanOrEqual(1);
    expect((await get(secondPort, '/metrics')).text).toMatch(/^leader_election_master_status\{name="sendense-nutanix-operator"\} 1$/m);
  });

  it('a standby takes over the lease of a leader that crashed once the lease expires, not before', async () => {
    // A crashed leader leaves its Lease behind, unreleased and no longer renewed.
    const renewTime = microTime(new Date());
    await env.admin.create(
      leaseType,
      env.namespace,
      {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { name: 'crash-test' },
        spec: { holderIdentity: 'crashed-operator', leaseDurationSeconds: 2, acquireTime: renewTime, renewTime, leaseTransitions: 0 },
      },
      AbortSignal.timeout(10_000),
    );
    const standby = await newManager('standby', { name: 'crash-test' });
    standby.addController(nutanixClusterController());
    await standby.start();
    const lease = async () => leaseSchema.parse(await env.admin.get(leaseType, env.namespace, 'crash-test', AbortSignal.timeout(10_000)));
    expect(standby.isLeader()).toBe(false);
    expect((await lease()).spec.holderIdentity).toBe('crashed-operator');
    await eventually('the standby to take over', async () => (standby.isLeader() ? true : undefined));
    expect(await lease()).toMatchObject({ spec: { holderIdentity: 'standby', leaseTransitions: 1 } });
  });

  it('retries retryable failures with backoff and parks non-retryable ones as Ready=False with a Warning event', async () => {
    const attempts = new Map<string, number>();
    const flaky: ControllerDefinition = {
      name: 'flaky',
      for: nutanixClusterType,
      async reconcile({ name }) {
        const n = (attempts.get(name) ?? 0) + 1;
        attempts.set(name, n);
        if (name === 'err-transient' && n <= 2) throw new AppError(ErrorCode.Unavailable, 'Prism is busy', { retryable: true });
        if (name === 'err-terminal') throw new AppError(ErrorCode.InvalidInput, 'spec.endpoint names no Prism', { hint: 'set spec.endpoint to https://pc:9440' });
        return {};
      },
    };
    const manager = await newManager('errors', { leaderElection: false });
    manager.addController(flaky);
    await manager.start();
    await env.apply([cluster('err-transient'), cluster('err-terminal')]);

    await eventually('three attempts of err-transient', async () => ((attempts.get('err-transient') ?? 0) >= 3 ? true : undefined));
    await eventually('the third attempt counted as a success', async () =>
      (await counter(manager.metrics, 'reconcileTotal', { controller: 'flaky', result: 'success' })) >= 1 ? true : undefined,
    );
    expect(await counter(manager.metrics, 'reconcileErrors', { controller: 'flaky' })).toBeGreaterThanOrEqual(2);

    const reason = await eventually('err-terminal Ready=False', async () => (await readyReason('err-terminal')) ?? undefined);
    expect(reason).toBe('InvalidInput');
    const object = nutanixCluster.parse(await env.admin.get(nutanixClusterType, env.namespace, 'err-terminal', AbortSignal.timeout(10_000)));
    expect(object.status?.conditions?.find((c) => c.type === 'Ready')?.message).toBe('spec.endpoint names no Prism (set spec.endpoint to https://pc:9440)');
    const events = eventList.parse(await env.admin.request({ method: 'GET', path: `/apis/events.k8s.io/v1/namespaces/${env.namespace}/events`, signal: AbortSignal.timeout(10_000) }));
    expect(events.items.find((e) => e.regarding.name === 'err-terminal')).toMatchObject({ type: 'Warning', reason: 'InvalidInput' });
    // Its own status write does not bring it back (status changes do not move metadata.generation): one attempt.
    await env.apply([cluster('err-marker')]);
    await eventually('a later object reconciled', async () => (attempts.has('err-marker') ? true : undefined));
    expect(attempts.get('err-terminal')).toBe(1);
  });

  it('never reconciles one key in two workers at once, and folds the changes made meanwhile into one more reconcile', async () => {
    let running = 0;
    let peak = 0;
    let reconciles = 0;
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    const slow: ControllerDefinition = {
      name: 'slow',
      for: nutanixClusterType,
      workers: 4,
      async reconcile({ name }) {
        if (name !== 'burst') return {};
        reconciles++;
        running++;
        peak = Math.max(peak, running);
        await held; // the first reconcile holds the key while the spec changes 15 times
        running--;
        return {};
      },
    };
    const manager = await newManager('burst', { leaderElection: false });
    manager.addController(slow);
    await manager.start();
    await env.apply([cluster('burst')]);
    await eventually('the first reconcile', async () => (running === 1 ? true : undefined));
    const updates = 15;
    for (let i = 0; i < updates; i++) {
      await env.admin.patch(nutanixClusterType, env.namespace, 'burst', { spec: { endpoint: `https://pc-${i}.invalid.test:9440` } }, { patchType: PatchType.Merge, signal: AbortSignal.timeout(10_000) });
    }
    await eventually('every change in the cache', async () => (manager.informer(nutanixClusterType).get(env.namespace, 'burst')?.metadata.generation === updates + 1 ? true : undefined));
    release();
    await eventually('the queue to drain', async () => (reconciles === 2 && running === 0 ? true : undefined));
    expect(peak).toBe(1);
    expect(reconciles).toBe(2);
  });

  it('aggregates repeats of an Event into its series count', async () => {
    const manager = await newManager('events', { leaderElection: false });
    await env.apply([cluster('ev-target')]);
    const target = kubeObject.parse(await env.admin.get(nutanixClusterType, env.namespace, 'ev-target', AbortSignal.timeout(10_000)));
    const event = { regarding: { ...target, apiVersion: groupVersion, kind: 'NutanixCluster' }, type: EventKind.Warning, reason: 'Unreachable', action: 'Discover', note: 'cannot reach Prism' } as const;
    for (let i = 0; i < 3; i++) await manager.events.record(event, AbortSignal.timeout(10_000));
    await manager.events.record({ ...event, reason: 'Unauthenticated', note: 'wrong password' }, AbortSignal.timeout(10_000));
    const events = eventList.parse(await env.admin.request({ method: 'GET', path: `/apis/events.k8s.io/v1/namespaces/${env.namespace}/events`, signal: AbortSignal.timeout(10_000) }));
    const mine = events.items.filter((e) => e.regarding.name === 'ev-target');
    expect(mine.map((e) => [e.reason, e.series?.count ?? 1]).sort()).toEqual([['Unauthenticated', 1], ['Unreachable', 3]]);
  });

  it('a status patch from a stale read fails with a retryable conflict instead of overwriting', async () => {
    await env.apply([cluster('stale')]);
    const api = await env.operatorApi();
    const read = kubeObject.parse(await api.get(nutanixClusterType, env.namespace, 'stale', AbortSignal.timeout(10_000)));
    await patchStatus(api, nutanixClusterType, read, { vmCount: 1 }, AbortSignal.timeout(10_000));
    const conflict = await patchStatus(api, nutanixClusterType, read, { vmCount: 2 }, AbortSignal.timeout(10_000)).catch((err: unknown) => err);
    expect(conflict).toMatchObject({ code: 'CONFLICT', retryable: true });
    expect(kubeStatusOf(conflict)).toBe(409);
    const now = nutanixCluster.parse(await api.get(nutanixClusterType, env.namespace, 'stale', AbortSignal.timeout(10_000)));
    expect(now.status?.vmCount).toBe(1);
  });

  it('sendense-nutanix operator serves ready probes and metrics under the Role, and releases its lease on SIGTERM', async () => {
    const kubeconfig = await env.testbed.kubeconfigFor(operatorServiceAccount, env.namespace);
    const port = await freePort();
    const child = spawn(bin, ['operator', '--kubeconfig', kubeconfig, '--namespace', env.namespace, '--metrics-port', String(port), '--health-port', String(port), '--bind-address', '127.0.0.1', '--identity', 'cli-operator', '--log-level', 'warn'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = once(child, 'exit');
    try {
      const ready = await eventually('the operator to be ready', async () => {
        const response = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(5000) });
        return response.status === 200 ? response.text() : undefined;
      }, 60_000);
      expect(ready).toContain('leader election: leader');
      expect(ready).toContain('informer nutanixclusters: synced');
      await env.apply([cluster('cli-one')]);
      await eventually('cli-one reconciled by the CLI', async () => ((await readyReason('cli-one')) === 'SecretNotFound' ? true : undefined));
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
      expect(metrics).toMatch(/^controller_runtime_reconcile_total\{controller="nutanixcluster",result="requeue_after"\} [1-9]/m);
    } finally {
      child.kill('SIGTERM');
    }
    const [code] = await exited;
    expect(stderr).not.toMatch(/"level":(50|60)/);
    expect(code).toBe(0);
    const lease = leaseSchema.parse(await env.admin.get(leaseType, env.namespace, 'sendense-nutanix-operator', AbortSignal.timeout(10_000)));
    expect(lease.spec.holderIdentity ?? '').toBe('');
  });

  it('a watch from a resourceVersion the apiserver no longer has fails as 410 Gone (the informer relists on it)', async () => {
    const api = await env.operatorApi();
    const gone = await api.watch(nutanixClusterType, env.namespace, '1', () => {}, AbortSignal.timeout(10_000)).catch((err: unknown) => err);
    expect(kubeStatusOf(gone)).toBe(410);
    expect(gone).toMatchObject({ code: 'CONFLICT', retryable: true });
  });

  it('an informer relists when its watch stays quiet and hands every object to resync', async () => {
    const informer = new Informer(await env.operatorApi(), vmBackupPolicyType, env.namespace, log, { watchdogMs: 500, resyncPeriodMs: 300 });
    await env.apply([
      {
        apiVersion: groupVersion,
        kind: 'VMBackupPolicy',
        metadata: { name: 'quiet', namespace: env.namespace },
        spec: { clusterRef: { name: 'lab' }, selector: { namePattern: 'db-*' }, schedule: '30 1 * * *', repository: { persistentVolumeClaim: { claimName: 'backups' } } },
      },
    ]);
    const resynced: string[] = [];
    informer.on((event, object) => {
      if (event === 'resync') resynced.push(object.metadata.name);
    });
    informer.start();
    try {
      await informer.waitForSync();
      expect(informer.list().map((o) => o.metadata.name)).toEqual(['quiet']);
      await eventually('a watchdog relist', async () => (informer.lists >= 2 ? true : undefined));
      await eventually('a resync of the policy', async () => (resynced.includes('quiet') ? true : undefined));
      expect(informer.isHealthy()).toBe(true);
    } finally {
      await informer.stop();
    }
  });
});
