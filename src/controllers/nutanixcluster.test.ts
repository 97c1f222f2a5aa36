/**
 * The NutanixCluster controller on a real kube-apiserver (RBAC on, the operator under its own ServiceAccount and
 * Role) against the Prism simulator: real discovery figures, each credential problem named by its condition
 * reason, and a rotated Secret taking effect in the same running operator.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { groupVersion } from '../crds/common.ts';
import { nutanixCluster, type NutanixCluster } from '../crds/nutanix-cluster.ts';
import { createLogger } from '../lib/log.ts';
import { Manager } from '../operator/manager.ts';
import { nutanixClusterType, secretType } from '../operator/resources.ts';
import { createPrismClient } from '../prism/client.ts';
import { eventually, startOperatorEnv, type OperatorEnv } from '../../test/operator/operator-env.ts';
import { startSim, type RunningSim } from '../../test/support/sim.ts';
import { nutanixClusterController } from './nutanixcluster.ts';

const eventList = z.object({ items: z.array(z.looseObject({ reason: z.string(), type: z.string(), note: z.string(), regarding: z.looseObject({ name: z.string() }) })) });

describe('NutanixCluster controller', () => {
  let env: OperatorEnv;
  let sim: RunningSim;
  let manager: Manager;
  const log = createLogger({ name: 'ntnx-test', level: 'warn' });

  const secret = (name: string, data: Record<string, string>) => ({
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name, namespace: env.namespace },
    stringData: data,
  });
  const cluster = (name: string, spec: Record<string, unknown>) => ({
    apiVersion: groupVersion,
    kind: 'NutanixCluster',
    metadata: { name, namespace: env.namespace },
    spec: { endpoint: sim.endpoint, ...spec },
  });
  const read = async (name: string): Promise<NutanixCluster> => nutanixCluster.parse(await env.admin.get(nutanixClusterType, env.namespace, name, AbortSignal.timeout(10_000)));
  /** The cluster once its condition `type` has `status` and `reason` for the current generation. */
  const waitFor = (name: string, type: string, status: string, reason: string) =>
    eventually(`${name} ${type}=${status} (${reason})`, async () => {
      const object = await read(name);
      const found = object.status?.conditions?.find((c) => c.type === type);
      if (found?.status !== status || found.reason !== reason) throw new Error(`${type} is ${found?.status}/${found?.reason}: ${found?.message}`);
      return object;
    });

  beforeAll(async () => {
    [env, sim] = await Promise.all([startOperatorEnv('ntnx'), startSim({ vms: 3, disksPerVm: 2 })]);
    await env.apply([secret('prism-ca', { 'ca.crt': sim.caPem })]);
    manager = new Manager({
      api: await env.operatorApi(),
      namespace: env.namespace,
      log,
      identity: 'ntnx-test',
      leaderElection: false,
      runner: { baseBackoffMs: 200, maxBackoffMs: 2000 },
    });
    manager.addController(nutanixClusterController());
    await manager.start();
  });

  afterAll(async () => {
    await manager?.stop();
    await Promise.all([env?.stop(), sim?.stop()]);
  });

  it('a valid cluster becomes Ready with the figures Prism reports, listing VMs in pages without per-VM GETs', async () => {
    await sim.admin.resetCounters();
    await env.apply([secret('prism-valid', { username: sim.username, password: sim.password }), cluster('valid', { credentialsSecretRef: { name: 'prism-valid' }, caSecretRef: { name: 'prism-ca' } })]);
    const ready = await waitFor('valid', 'Ready', 'True', 'Discovered');

    const direct = createPrismClient({ endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem });
    const capabilities = await direct.capabilities();
    const vms = await direct.listVms();
    await direct.close();
    const status = ready.status;
    expect(vms).toHaveLength(3);
    expect(status?.vmCount).toBe(3);
    expect(status?.prismCentralVersion).toBe(capabilities.pcVersion);
    expect(status?.apiGenerations).toEqual(capabilities.apiGenerations);
    expect(status?.changedRegionsSupported).toBe(true);
    const elements = capabilities.clusters.filter((c) => !c.isPrismCentral);
    expect(elements.length).toBeGreaterThan(0);
    expect(status?.clusters).toEqual(elements.map((c) => ({ name: c.name, uuid: c.uuid, aosVersion: c.version })));
    expect(status?.observedGeneration).toBe(ready.metadata.generation);
    expect(Date.parse(status?.lastDiscoveryTime ?? '')).toBeGreaterThan(Date.now() - 60_000);
    for (const type of ['CredentialsValid', 'Reachable']) expect(status?.conditions?.find((c) => c.type === type)?.status).toBe('True');
    const routes = Object.keys((await sim.admin.counters()).byRoute);
    expect(routes.some((r) => /vms/.test(r))).toBe(true);
    expect(routes.filter((r) => /^GET .*\/vms\/\{/.test(r))).toEqual([]);
  });

  it('a wrong password is CredentialsValid=False Unauthenticated, and fixing the Secret makes it Ready without a restart', async () => {
    await env.apply([secret('prism-rotate', { username: sim.username, password: 'not-the-password' }), cluster('rotate', { credentialsSecretRef: { name: 'prism-rotate' }, caSecretRef: { name: 'prism-ca' } })]);
    const rejected = await waitFor('rotate', 'CredentialsValid', 'False', 'Unauthenticated');
    const ready = rejected.status?.conditions?.find((c) => c.type === 'Ready');
    expect(ready).toMatchObject({ status: 'False', reason: 'Unauthenticated' });
    expect(ready?.message).toMatch(/Secret prism-rotate/);
    expect(rejected.status?.conditions?.find((c) => c.type === 'Reachable')?.status).toBe('True');
    expect(JSON.stringify(rejected)).not.toContain('not-the-password');

    const events = eventList.parse(await env.admin.request({ method: 'GET', path: `/apis/events.k8s.io/v1/namespaces/${env.namespace}/events`, signal: AbortSignal.timeout(10_000) }));
    expect(events.items.find((e) => e.regarding.name === 'rotate' && e.reason === 'Unauthenticated')?.type).toBe('Warning');

    await env.apply([secret('prism-rotate', { username: sim.username, password: sim.password })]);
    const fixed = await waitFor('rotate', 'Ready', 'True', 'Discovered');
    expect(fixed.status?.conditions?.find((c) => c.type === 'CredentialsValid')).toMatchObject({ status: 'True', reason: 'Authenticated' });
    expect(fixed.status?.vmCount).toBe(3);
  });

  it('a missing Secret, then a missing key, are named by the condition reason', async () => {
    await env.apply([cluster('nosecret', { credentialsSecretRef: { name: 'prism-later' }, caSecretRef: { name: 'prism-ca' } })]);
    const missing = await waitFor('nosecret', 'CredentialsValid', 'False', 'SecretNotFound');
    expect(missing.status?.conditions?.find((c) => c.type === 'Ready')?.message).toMatch(/prism-later.*does not exist/);
    expect(missing.status?.conditions?.find((c) => c.type === 'Reachable')?.status).toBe('Unknown');

    await env.apply([secret('prism-later', { username: sim.username })]);
    const noPassword = await waitFor('nosecret', 'CredentialsValid', 'False', 'SecretKeyMissing');
    expect(noPassword.status?.conditions?.find((c) => c.type === 'CredentialsValid')?.message).toMatch(/no password key/);

    await env.apply([secret('prism-later', { username: sim.username, password: sim.password })]);
    await waitFor('nosecret', 'Ready', 'True', 'Discovered');
  });

  it('an untrusted certificate is Reachable=False TlsUntrusted with the fix in the message', async () => {
    await env.apply([secret('prism-noca', { username: sim.username, password: sim.password }), cluster('noca', { credentialsSecretRef: { name: 'prism-noca' } })]);
    const untrusted = await waitFor('noca', 'Reachable', 'False', 'TlsUntrusted');
    expect(untrusted.status?.conditions?.find((c) => c.type === 'Ready')?.message).toMatch(/spec\.caSecretRef/);
    expect(untrusted.status?.conditions?.find((c) => c.type === 'CredentialsValid')?.status).toBe('Unknown');
  });

  it('the operator’s ServiceAccount may read Secrets but not change them', async () => {
    const api = await env.operatorApi();
    await expect(api.get(secretType, env.namespace, 'prism-valid', AbortSignal.timeout(10_000))).resolves.toBeDefined();
    await expect(api.delete(secretType, env.namespace, 'prism-valid', AbortSignal.timeout(10_000))).rejects.toMatchObject({ code: 'FORBIDDEN' });
  });
});
