/**
 * The test bed is a real etcd + kube-apiserver with RBAC: these tests prove a ServiceAccount gets exactly what its
 * Role grants (and 403 for everything else), through @kubernetes/client-node and through the real kubectl.
 */
import { execFile, spawn } from 'node:child_process';
import { access, readdir, readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createInterface } from 'node:readline';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { ApiException, AuthenticationV1Api, CoreV1Api, KubeConfig, RbacAuthorizationV1Api } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { requireTestbedBinaries, startTestbed, type Testbed, type TestbedBinaries } from '../support/testbed.ts';

const execFileAsync = promisify(execFile);

function clientsFor(kubeconfigPath: string) {
  const config = new KubeConfig();
  config.loadFromFile(kubeconfigPath);
  return {
    core: config.makeApiClient(CoreV1Api),
    rbac: config.makeApiClient(RbacAuthorizationV1Api),
    authn: config.makeApiClient(AuthenticationV1Api),
  };
}

/** The HTTP status a client-node call failed with (the call must fail). */
async function statusOf(call: Promise<unknown>): Promise<number> {
  try {
    await call;
  } catch (err) {
    if (err instanceof ApiException) return err.code;
    throw err;
  }
  throw new Error('the call succeeded but was expected to be refused');
}

describe('kubernetes test bed', () => {
  let testbed: Testbed;
  let binaries: TestbedBinaries;
  const namespace = `testbed-${randomBytes(4).toString('hex')}`;
  const otherNamespace = `${namespace}-other`;

  beforeAll(async () => {
    binaries = await requireTestbedBinaries();
    testbed = await startTestbed({ rbac: true });
    const admin = clientsFor(testbed.kubeconfigAdmin);
    for (const name of [namespace, otherNamespace]) await admin.core.createNamespace({ body: { metadata: { name } } });
    await admin.core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: 'reader' } } });
    await admin.rbac.createNamespacedRole({
      namespace,
      body: {
        metadata: { name: 'configmap-reader' },
        rules: [{ apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'list'] }],
      },
    });
    await admin.rbac.createNamespacedRoleBinding({
      namespace,
      body: {
        metadata: { name: 'reader-reads-configmaps' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'configmap-reader' },
        subjects: [{ kind: 'ServiceAccount', name: 'reader', namespace }],
      },
    });
    for (const ns of [namespace, otherNamespace]) {
      await admin.core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'settings' }, data: { mode: 'test' } } });
    }
  });

  afterAll(async () => {
    await testbed?.stop();
  });

  it('serves over TLS with the CA it hands out, and the admin identity is cluster-admin', async () => {
    expect(testbed.server).toMatch(/^https:\/\//);
    expect(testbed.caPem).toContain('BEGIN CERTIFICATE');
    const review = await clientsFor(testbed.kubeconfigAdmin).authn.createSelfSubjectReview({
      body: { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' },
    });
    if (!testbed.external) expect(review.status?.userInfo?.groups).toContain('system:masters');
  });

  it('gives a ServiceAccount token that authenticates as that ServiceAccount', async () => {
    const reader = clientsFor(await testbed.kubeconfigFor('reader', namespace));
    const review = await reader.authn.createSelfSubjectReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' } });
    expect(review.status?.userInfo?.username).toBe(`system:serviceaccount:${namespace}:reader`);
  });

  it('honours an AbortSignal on its API calls', async () => {
    await expect(testbed.kubeconfigFor('reader', namespace, { signal: AbortSignal.abort() })).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('lets the ServiceAccount do what its Role allows and answers 403 to everything else', async () => {
    const reader = clientsFor(await testbed.kubeconfigFor('reader', namespace));

    const list = await reader.core.listNamespacedConfigMap({ namespace });
    expect(list.items.map((cm) => cm.metadata?.name)).toContain('settings');
    const read = await reader.core.readNamespacedConfigMap({ name: 'settings', namespace });
    expect(read.data).toEqual({ mode: 'test' });

    // A verb the Role lacks, a resource it lacks, the same resource in another namespace, and a cluster scope.
    expect(await statusOf(reader.core.createNamespacedConfigMap({ namespace, body: { metadata: { name: 'new' } } }))).toBe(403);
    expect(await statusOf(reader.core.deleteNamespacedConfigMap({ name: 'settings', namespace }))).toBe(403);
    expect(await statusOf(reader.core.listNamespacedSecret({ namespace }))).toBe(403);
    expect(await statusOf(reader.core.listNamespacedConfigMap({ namespace: otherNamespace }))).toBe(403);
    expect(await statusOf(reader.core.listNamespace())).toBe(403);
    // It cannot grant itself more either (RBAC escalation prevention).
    expect(
      await statusOf(
        reader.rbac.createNamespacedRole({ namespace, body: { metadata: { name: 'more' }, rules: [{ apiGroups: ['*'], resources: ['*'], verbs: ['*'] }] } }),
      ),
    ).toBe(403);
  });

  it('writes ServiceAccount kubeconfigs that the real kubectl uses with the same rights', async () => {
    const kubeconfig = await testbed.kubeconfigFor('reader', namespace);
    const kubectl = (...args: string[]) => execFileAsync(binaries.kubectl, ['--kubeconfig', kubeconfig, ...args]);

    const { stdout } = await kubectl('get', 'configmaps', '-n', namespace, '-o', 'name');
    expect(stdout.split('\n')).toContain('configmap/settings');
    expect((await kubectl('auth', 'can-i', 'list', 'configmaps', '-n', namespace)).stdout.trim()).toBe('yes');
    // `can-i` answers "no" with exit status 1.
    await expect(kubectl('auth', 'can-i', 'create', 'configmaps', '-n', namespace)).rejects.toMatchObject({ code: 1, stdout: 'no\n' });
    await expect(kubectl('get', 'secrets', '-n', namespace)).rejects.toMatchObject({ stderr: expect.stringContaining('Forbidden') });
  });

  it.skipIf(Boolean(process.env.SENDENSE_E2E_KUBECONFIG))('uses the cluster named by SENDENSE_E2E_KUBECONFIG instead of starting one', async () => {
    process.env.SENDENSE_E2E_KUBECONFIG = testbed.kubeconfigAdmin;
    let external: Testbed;
    try {
      external = await startTestbed();
    } finally {
      delete process.env.SENDENSE_E2E_KUBECONFIG;
    }
    expect(external).toMatchObject({ external: true, server: testbed.server, caPem: testbed.caPem, kubeconfigAdmin: testbed.kubeconfigAdmin });
    const reader = clientsFor(await external.kubeconfigFor('reader', namespace));
    const review = await reader.authn.createSelfSubjectReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' } });
    expect(review.status?.userInfo?.username).toBe(`system:serviceaccount:${namespace}:reader`);
    // Stopping it leaves the cluster alone: it was not ours to stop.
    await external.stop();
    expect((await clientsFor(testbed.kubeconfigAdmin).core.readNamespace({ name: namespace })).metadata?.name).toBe(namespace);
  });

  it('runs the pinned kubectl and helm from the cache', async () => {
    const pinned = /-(v[0-9][^/]*)$/;
    const kubectlVersion = z
      .object({ clientVersion: z.object({ gitVersion: z.string() }) })
      .parse(JSON.parse((await execFileAsync(binaries.kubectl, ['version', '--client', '-o', 'json'])).stdout));
    expect(kubectlVersion.clientVersion.gitVersion).toBe(pinned.exec(binaries.kubectl)?.[1]);

    // `--short` prints v3.x.y, followed by +g<commit> when the build knows its commit.
    const helmVersion = (await execFileAsync(binaries.helm, ['version', '--short'])).stdout.trim();
    expect(helmVersion.split('+')[0]).toBe(pinned.exec(binaries.helm)?.[1]);
  });
});

describe.skipIf(Boolean(process.env.SENDENSE_E2E_KUBECONFIG))('kubernetes test bed without RBAC', () => {
  it('allows everything with rbac: false, and stop() shuts the apiserver down and removes its files', async () => {
    const testbed = await startTestbed({ rbac: false });
    try {
      const admin = clientsFor(testbed.kubeconfigAdmin);
      await admin.core.createNamespace({ body: { metadata: { name: 'open' } } });
      await admin.core.createNamespacedServiceAccount({ namespace: 'open', body: { metadata: { name: 'nobody' } } });
      // No Role is bound to this account, yet AlwaysAllow lets it read Secrets.
      const nobody = clientsFor(await testbed.kubeconfigFor('nobody', 'open'));
      expect((await nobody.core.listNamespacedSecret({ namespace: 'open' })).items).toEqual([]);
    } finally {
      await testbed.stop();
    }
    await expect(access(testbed.kubeconfigAdmin)).rejects.toMatchObject({ code: 'ENOENT' });
    const port = Number(new URL(testbed.server).port);
    const connection = new Promise<void>((resolveConnect, reject) => {
      const socket = connect(port, '127.0.0.1', () => {
        socket.destroy();
        resolveConnect();
      });
      socket.once('error', reject);
    });
    await expect(connection).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });
});

describe.skipIf(Boolean(process.env.SENDENSE_E2E_KUBECONFIG))('kubernetes test bed in a killed worker', () => {
  /** Pids of the processes whose command line mentions `text` (etcd and kube-apiserver name their temp dir). */
  async function processesMentioning(text: string): Promise<number[]> {
    const pids: number[] = [];
    for (const entry of await readdir('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes(text)) pids.push(Number(entry));
    }
    return pids;
  }

  it('takes etcd and kube-apiserver down when the process that started them is killed outright', async () => {
    const supportModule = new URL('../support/testbed.ts', import.meta.url).href;
    const script = `const { startTestbed } = await import(${JSON.stringify(supportModule)});
      const testbed = await startTestbed({ rbac: true });
      console.log(JSON.stringify({ kubeconfigAdmin: testbed.kubeconfigAdmin }));
      setInterval(() => {}, 60_000);`;
    const worker = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
    const workerExited = new Promise((resolveExit) => worker.once('exit', resolveExit));
    let dir = '';
    try {
      for await (const line of createInterface({ input: worker.stdout })) {
        dir = dirname(z.object({ kubeconfigAdmin: z.string() }).parse(JSON.parse(line)).kubeconfigAdmin);
        break;
      }
      expect(await processesMentioning(dir)).toHaveLength(2);
      worker.kill('SIGKILL');
      await workerExited;
      // The kernel delivers the parent-death signal as the worker dies; wait (bounded) for both to be reaped.
      for (let i = 0; i < 100 && (await processesMentioning(dir)).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
      expect(await processesMentioning(dir)).toEqual([]);
    } finally {
      worker.kill('SIGKILL');
      if (dir) await rm(dir, { recursive: true, force: true });
    }
  });
});
