/**
 * The kubelet stand-in on the real kube-apiserver: it runs a Job's command with env from a Secret and the PVC
 * mounted at the container path, writes the Pod's and the Job's status like the kubelet and the Job controller,
 * and kills the process (and removes the Pod) when the Job is deleted.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BatchV1Api, CoreV1Api, KubeConfig, type V1Job } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startKubelet, type KubeletStandIn } from '../support/kubelet.ts';
import { requireTestbedBinaries, startTestbed, type Testbed } from '../support/testbed.ts';

const namespace = `kubelet-${randomBytes(4).toString('hex')}`;

function shellJob(name: string, script: string): V1Job {
  return {
    metadata: { name, namespace },
    spec: {
      backoffLimit: 0,
      template: {
        spec: {
          restartPolicy: 'Never',
          serviceAccountName: 'worker',
          containers: [
            {
              name: 'main',
              image: 'busybox',
              command: ['sh', '-c', script],
              env: [
                { name: 'GREETING', value: 'hello' },
                { name: 'SECRET_WORD', valueFrom: { secretKeyRef: { name: 'words', key: 'word' } } },
                { name: 'MY_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
              ],
              volumeMounts: [{ name: 'data', mountPath: '/repository' }],
            },
          ],
          volumes: [{ name: 'data', persistentVolumeClaim: { claimName: 'data' } }],
        },
      },
    },
  };
}

describe('kubelet stand-in', { timeout: 120_000 }, () => {
  let testbed: Testbed;
  let kubelet: KubeletStandIn;
  let batch: BatchV1Api;
  let core: CoreV1Api;
  let hostDir: string;

  async function finalCondition(name: string): Promise<{ type: string; message?: string; job: V1Job }> {
    for (;;) {
      const job = await batch.readNamespacedJob({ name, namespace });
      const condition = job.status?.conditions?.find((c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True');
      if (condition) return { type: condition.type, ...(condition.message ? { message: condition.message } : {}), job };
      await sleep(100);
    }
  }

  beforeAll(async () => {
    await requireTestbedBinaries();
    testbed = await startTestbed({ rbac: true });
    const config = new KubeConfig();
    config.loadFromFile(testbed.kubeconfigAdmin);
    core = config.makeApiClient(CoreV1Api);
    batch = config.makeApiClient(BatchV1Api);
    await core.createNamespace({ body: { metadata: { name: namespace } } });
    await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: 'worker' } } });
    await core.createNamespacedSecret({ namespace, body: { metadata: { name: 'words' }, stringData: { word: 'swordfish' } } });
    hostDir = await mkdtemp(join(tmpdir(), 'kubelet-pvc-'));
    kubelet = await startKubelet({
      kubeconfigAdmin: testbed.kubeconfigAdmin,
      namespace,
      persistentVolumes: { data: hostDir },
      kubeconfigFor: (sa, ns) => testbed.kubeconfigFor(sa, ns),
    });
  });

  afterAll(async () => {
    await kubelet?.stop();
    await testbed?.stop();
    if (hostDir) await rm(hostDir, { recursive: true, force: true });
  });

  it('runs a Job with env from a Secret and the PVC at its mount path, then marks it Complete', async () => {
    await batch.createNamespacedJob({
      namespace,
      body: shellJob('writes', 'echo "$GREETING $SECRET_WORD $MY_NAMESPACE" > /repository/out.txt && test -n "$KUBECONFIG"'),
    });
    const { type, job } = await finalCondition('writes');
    expect(type).toBe('Complete');
    expect(job.status?.succeeded).toBe(1);
    expect(job.status?.completionTime).toBeDefined();
    expect(await readFile(join(hostDir, 'out.txt'), 'utf8')).toBe(`hello swordfish ${namespace}\n`);
  });

  it('marks a failing Job Failed as the Job controller would; the Pod holds the exit code and termination message', async () => {
    const job = shellJob('fails', 'echo "disk 3 is gone" > "$SENDENSE_TERMINATION_LOG"; exit 3');
    const withPolicy = shellJob('fails-by-policy', 'exit 2');
    withPolicy.spec!.podFailurePolicy = { rules: [{ action: 'FailJob', onExitCodes: { operator: 'In', values: [2] } }] };
    await batch.createNamespacedJob({ namespace, body: job });
    await batch.createNamespacedJob({ namespace, body: withPolicy });

    const failed = await finalCondition('fails');
    expect(failed.type).toBe('Failed');
    expect(failed.job.status?.failed).toBe(1);
    expect(failed.message).toBe('Job has reached the specified backoff limit');
    const pods = await core.listNamespacedPod({ namespace, labelSelector: 'batch.kubernetes.io/job-name=fails' });
    expect(pods.items).toHaveLength(1);
    const pod = pods.items[0];
    expect(pod?.metadata?.ownerReferences?.[0]).toMatchObject({ kind: 'Job', name: 'fails', uid: failed.job.metadata?.uid, controller: true });
    expect(pod?.status?.phase).toBe('Failed');
    expect(pod?.status?.containerStatuses?.[0]?.state?.terminated).toMatchObject({ exitCode: 3, reason: 'Error', message: 'disk 3 is gone\n' });

    const byPolicy = await finalCondition('fails-by-policy');
    expect(byPolicy.type).toBe('Failed');
    expect(byPolicy.message).toMatch(/failed with exit code 2 matching FailJob rule at index 0/);
  });

  it('kills the process when its Job is deleted', async () => {
    await batch.createNamespacedJob({ namespace, body: shellJob('sleeps', 'touch /repository/sleeping; exec sleep 600') });
    const run = await kubelet.started('sleeps');
    expect(() => process.kill(run.pid, 0)).not.toThrow();
    await batch.deleteNamespacedJob({ name: 'sleeps', namespace, propagationPolicy: 'Background' });
    expect(await run.exited).toBeNull();
    expect(() => process.kill(run.pid, 0)).toThrow();
    // The Pod is gone too (the garbage collector's part).
    for (;;) {
      const pods = await core.listNamespacedPod({ namespace, labelSelector: 'batch.kubernetes.io/job-name=sleeps' });
      if (pods.items.length === 0) break;
      await sleep(100);
    }
  });
});
