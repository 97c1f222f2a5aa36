/**
 * The operator e2e harness: a real kube-apiserver (or SENDENSE_E2E_KUBECONFIG's cluster), the Helm chart installed
 * into a fresh namespace (so the operator and the movers run under exactly the chart's RBAC), the Prism simulator,
 * the kubelet stand-in running export Jobs as local processes, a NutanixCluster with its Secrets, a repository PVC
 * mapped to a host directory, and the operator itself as a local process (`bin/sendense-nutanix operator`) with a
 * TokenRequest kubeconfig of the chart's operator ServiceAccount. Helpers wait for phases and conditions, kill -9
 * and restart the operator, and restore a disk from the repository to compare it with the simulator's disk.
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect } from 'vitest';
import { z } from 'zod';
import { vmBackupRun, type VMBackupRun } from '../../src/crds/vm-backup-run.ts';
import { KubeApi, resourcePath } from '../../src/operator/kube.ts';
import { jobType, nutanixClusterType, persistentVolumeClaimType, secretType, vmBackupRunType } from '../../src/operator/resources.ts';
import { installChart } from '../packaging/chart.ts';
import { startKubelet, type KubeletStandIn } from '../support/kubelet.ts';
import { startOperatorProcess, type OperatorProcess } from '../support/operator-process.ts';
import { startSim, type RunningSim, type SimOptions } from '../support/sim.ts';
import { startTestbed, type Testbed } from '../support/testbed.ts';

const execFileAsync = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const bin = join(root, 'bin/sendense-nutanix');

export const clusterName = 'prism';
export const claimName = 'backups';

export interface E2eOptions {
  sim?: SimOptions;
  /** Extra environment of the operator process (e.g. SENDENSE_MOVER_TTL_SECONDS_AFTER_FINISHED). */
  operatorEnv?: Record<string, string>;
}

export interface E2e {
  testbed: Testbed;
  sim: RunningSim;
  kubelet: KubeletStandIn;
  namespace: string;
  /** Host directory behind the repository PVC (the movers see it at /repository). */
  repositoryDir: string;
  /** Admin access to the API (for the test's own reads and writes). */
  api: KubeApi;
  operator: OperatorProcess;
  startOperator(): Promise<void>;
  /** SIGKILL, as a crashed or evicted pod. */
  killOperator(): Promise<void>;
  createRun(name: string, spec: Record<string, unknown>): Promise<void>;
  getRun(name: string): Promise<VMBackupRun | undefined>;
  waitForRun(name: string, done: (run: VMBackupRun) => boolean, what: string, timeoutMs?: number): Promise<VMBackupRun>;
  /** The run's row as `kubectl get vmbr` shows it (server-side Table). */
  printerRow(name: string): Promise<Record<string, unknown>>;
  jobsOf(runName: string): Promise<string[]>;
  /** `sendense-nutanix restore` of one disk of the VM's newest point, then `qemu-img compare` with the sim's disk. */
  compareWithSim(vmName: string, vmUuid: string, disk: number): Promise<string>;
  stop(): Promise<void>;
}

const signal = (ms = 30_000) => AbortSignal.timeout(ms);

export async function startE2e(options: E2eOptions = {}): Promise<E2e> {
  const cleanups: (() => Promise<unknown>)[] = [];
  const stopAll = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  };
  try {
    const namespace = `e2e-${randomBytes(4).toString('hex')}`;
    const testbed = await startTestbed({ rbac: true });
    cleanups.push(() => testbed.stop());
    const chart = await installChart(testbed, { namespace, includeCrds: true });
    const sim = await startSim({ vms: 2, disksPerVm: 2, diskSize: '16MiB', ...options.sim });
    cleanups.push(() => sim.stop());
    const repositoryDir = await mkdtemp(join(tmpdir(), 'e2e-repository-'));
    cleanups.push(() => rm(repositoryDir, { recursive: true, force: true }));
    const work = await mkdtemp(join(tmpdir(), 'e2e-work-'));
    cleanups.push(() => rm(work, { recursive: true, force: true }));

    const api = KubeApi.fromKubeconfig(testbed.kubeconfigAdmin);
    await api.create(secretType, namespace, { metadata: { name: 'prism-credentials' }, stringData: { username: sim.username, password: sim.password } }, signal());
    await api.create(secretType, namespace, { metadata: { name: 'prism-ca' }, stringData: { 'ca.crt': sim.caPem } }, signal());
    await api.create(
      nutanixClusterType,
      namespace,
      {
        apiVersion: 'backup.sendense.io/v1alpha1',
        kind: 'NutanixCluster',
        metadata: { name: clusterName },
        spec: { endpoint: sim.endpoint, credentialsSecretRef: { name: 'prism-credentials' }, caSecretRef: { name: 'prism-ca' }, concurrency: { maxVMs: 2, maxDisks: 4 } },
      },
      signal(),
    );
    await api.create(
      persistentVolumeClaimType,
      namespace,
      { metadata: { name: claimName }, spec: { accessModes: ['ReadWriteMany'], resources: { requests: { storage: '1Gi' } } } },
      signal(),
    );

    const kubelet = await startKubelet({
      kubeconfigAdmin: testbed.kubeconfigAdmin,
      namespace,
      persistentVolumes: { [claimName]: repositoryDir },
      kubeconfigFor: (sa, ns) => testbed.kubeconfigFor(sa, ns),
      extraEnv: { LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn' },
    });
    cleanups.push(() => kubelet.stop());

    const operatorKubeconfig = await testbed.kubeconfigFor(chart.operatorServiceAccount, namespace);
    let operatorOutput = (): string => '';
    let current: ChildProcess | undefined;
    const e2e: E2e = {
      testbed,
      sim,
      kubelet,
      namespace,
      repositoryDir,
      api,
      get operator(): OperatorProcess {
        if (!current) throw new Error('the operator is not running');
        return { child: current, output: operatorOutput };
      },
      async startOperator() {
        const started = startOperatorProcess({ kubeconfig: operatorKubeconfig, namespace, fastLeaderElection: true, ...(options.operatorEnv ? { env: options.operatorEnv } : {}) });
        current = started.child;
        operatorOutput = started.output;
      },
      async killOperator() {
        const child = current;
        if (!child || child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await exited;
        current = undefined;
      },
      async createRun(name, spec) {
        await api.create(vmBackupRunType, namespace, { apiVersion: 'backup.sendense.io/v1alpha1', kind: 'VMBackupRun', metadata: { name }, spec }, signal());
      },
      async getRun(name) {
        const raw = await api.getIfExists(vmBackupRunType, namespace, name, signal());
        return raw ? vmBackupRun.parse(raw) : undefined;
      },
      async waitForRun(name, done, what, timeoutMs = 90_000) {
        const deadline = Date.now() + timeoutMs;
        let last: VMBackupRun | undefined;
        for (;;) {
          last = await e2e.getRun(name);
          if (last && done(last)) return last;
          if (Date.now() > deadline) {
            const problems = operatorOutput().split('\n').filter((l: string) => /"level":(40|50|60)/.test(l)).slice(-10).join('\n');
            throw new Error(`run ${name}: ${what} did not happen in ${timeoutMs / 1000} s; status: ${JSON.stringify(last?.status)}\noperator warnings:\n${problems}`);
          }
          await sleep(250);
        }
      },
      async printerRow(name) {
        const table = z
          .object({ columnDefinitions: z.array(z.object({ name: z.string() })), rows: z.array(z.object({ cells: z.array(z.unknown()) })) })
          .parse(await tableOf(api, namespace, name));
        const row = table.rows[0];
        if (!row) throw new Error(`no Table row for ${name}`);
        return Object.fromEntries(table.columnDefinitions.map((c, i) => [c.name, row.cells[i]]));
      },
      async jobsOf(runName) {
        const { items } = await api.list(jobType, namespace, signal());
        return items.filter((j) => j.metadata.labels?.['backup.sendense.io/run'] === runName).map((j) => j.metadata.name);
      },
      async compareWithSim(vmName, vmUuid, disk) {
        const out = join(work, `${vmName}-${disk}-${randomBytes(3).toString('hex')}.raw`);
        await execFileAsync(bin, ['restore', '--repo', repositoryDir, '--vm', vmUuid, '--point', 'latest', '--disk', String(disk), '--out', out, '--format', 'raw'], { signal: signal(60_000) });
        const { stdout } = await execFileAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, await sim.diskPath(vmName, disk)], { signal: signal(60_000) });
        await rm(out, { force: true });
        return stdout.trim();
      },
      async stop() {
        await e2e.killOperator();
        await stopAll();
      },
    };
    cleanups.push(() => e2e.killOperator());
    await e2e.startOperator();
    return e2e;
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** GET with the Table Accept header: the server evaluates the CRD's printer columns exactly as `kubectl get` shows them. */
function tableOf(api: KubeApi, namespace: string, name: string): Promise<unknown> {
  return api.request({ method: 'GET', path: resourcePath(vmBackupRunType, namespace, name), accept: 'application/json;as=Table;g=meta.k8s.io;v=v1', signal: signal() });
}

/** Spec of a run made by hand (kubectl create style) with clusterRef + repository. */
export const byHand = (vm: string) => ({ vm: { name: vm }, clusterRef: { name: clusterName }, repository: { persistentVolumeClaim: { claimName } } });
export const finished = (run: VMBackupRun): boolean => ['Succeeded', 'PartiallyFailed', 'Failed'].includes(run.status?.phase ?? '');
export const condition = (run: VMBackupRun | undefined, type: string) => run?.status?.conditions?.find((c) => c.type === type);

export function untilExporting(e2e: E2e, name: string): Promise<VMBackupRun> {
  return e2e.waitForRun(name, (r) => r.status?.phase === 'Exporting' && (r.status.disks ?? []).some((d) => d.jobName), 'Exporting with a Job', 60_000);
}

/** No volume group or iSCSI target left on the simulator, and exactly `keepRecoveryPoints` recovery points (the VMs' bases). */
export async function noLeftoversOnNutanix(e2e: E2e, keepRecoveryPoints: number): Promise<void> {
  let state = await e2e.sim.admin.state();
  // A mover stopped by SIGTERM releases its volume group on the way out: give it the stand-in's grace period.
  for (let i = 0; i < 40 && (state.volumeGroups.length > 0 || state.iscsiTargets.length > 0); i++) {
    await sleep(250);
    state = await e2e.sim.admin.state();
  }
  expect(state.volumeGroups).toEqual([]);
  expect(state.iscsiTargets).toEqual([]);
  expect(state.recoveryPoints.map((rp) => rp.name)).toHaveLength(keepRecoveryPoints);
}
