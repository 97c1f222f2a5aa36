/**
 * The "kubelet stand-in" of the e2e tests: the local test bed has no kubelet and no Job controller, so this
 * watches Jobs of one namespace on the real apiserver and runs each Job's (single) container command as a local
 * process. It creates the Job's Pod (labels and owner as the Job controller sets them), reports the Pod's status
 * as a kubelet would (Running, then Succeeded/Failed with the container's exit code and termination message), and
 * writes the Job's status as the Job controller would (conditions, reasons and messages included: the mover's
 * reason is in the Pod, not in the Job).
 *
 * - env: literal values, secretKeyRef (read with the admin kubeconfig), fieldRef metadata.namespace / metadata.name;
 * - KUBECONFIG: a TokenRequest token of the pod's ServiceAccount, so RBAC applies to the process as in a pod;
 * - volumes: a private mount namespace (`unshare --mount`) bind-mounts each PVC's host directory and a fresh
 *   emptyDir at the container's mount paths, so the process sees /repository and /tmp exactly as in a pod;
 * - KUBECONFIG and the termination-message file (env SENDENSE_TERMINATION_LOG: /dev/termination-log cannot be
 *   created here) live in the pod directory, bound at /run/sendense-kubelet-pod; the message is kept for the test;
 * - deleting the Job kills the process group (SIGTERM, then SIGKILL after 5 s).
 *
 * Not emulated: images (the container's command runs from this checkout), the securityContext (the process runs as
 * root, which the bind mounts need), resource limits, activeDeadlineSeconds; a Job whose pod cannot start (missing
 * Secret key, unknown claim) fails at once with reason StartFailed instead of waiting.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BatchV1Api, CoreV1Api, KubeConfig, makeInformer, Observable, PatchStrategy, type ConfigurationOptions, type V1Job } from '@kubernetes/client-node';
import { createLogger } from '../../src/lib/log.ts';

const log = createLogger({ name: 'kubelet-stand-in', level: process.env.LOG_LEVEL ?? 'warn' });
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** Where the process finds its kubeconfig and termination-log file (the pod's own directory, like a kubelet's). */
const podDir = '/run/sendense-kubelet-pod';

export interface KubeletOptions {
  kubeconfigAdmin: string;
  namespace: string;
  /** Host directory of each PersistentVolumeClaim by claim name. */
  persistentVolumes: Record<string, string>;
  /** Mints a kubeconfig for a ServiceAccount (Testbed.kubeconfigFor). */
  kubeconfigFor(serviceAccount: string, namespace: string): Promise<string>;
  /** Container command → host program; `sendense-nutanix` maps to bin/sendense-nutanix of this checkout. */
  programs?: Record<string, string>;
  /** Added to every process's environment (e.g. LOG_LEVEL). */
  extraEnv?: Record<string, string>;
}

export interface JobRun {
  pid: number;
  /** Resolves with the exit code (or null when killed by a signal). */
  exited: Promise<number | null>;
  output(): string;
  terminationMessage(): Promise<string | undefined>;
}

export interface KubeletStandIn {
  /** The process started for a Job, once it started. */
  run(jobName: string): JobRun | undefined;
  /** Waits until the Job's process has started. */
  started(jobName: string, timeoutMs?: number): Promise<JobRun>;
  stop(): Promise<void>;
}

/** metav1.Time has second precision; the apiserver refuses a startTime that differs from the stored one. */
function apiTime(date = new Date()): string {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function shellQuote(text: string): string {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

/** Request options for a JSON merge patch (the client's default patch type is JSON patch). */
export function mergePatchOptions(): ConfigurationOptions {
  return {
    middleware: [
      {
        pre: (context) => {
          context.setHeaderParam('Content-Type', PatchStrategy.MergePatch);
          return new Observable(Promise.resolve(context));
        },
        post: (context) => new Observable(Promise.resolve(context)),
      },
    ],
    middlewareMergeStrategy: 'append',
  };
}

interface Running extends JobRun {
  child: ChildProcess;
  workDir: string;
  deleted: boolean;
  podName: string;
}

/** The Job controller's reason and message for a failed pod: a FailJob rule of the podFailurePolicy, or the backoff limit. */
function failureCondition(job: V1Job, podName: string, exitCode: number | null): { reason: string; message: string } {
  const container = job.spec?.template.spec?.containers[0]?.name ?? '';
  const rules = job.spec?.podFailurePolicy?.rules ?? [];
  const index = rules.findIndex((rule) => {
    const codes = rule.onExitCodes;
    if (rule.action !== 'FailJob' || !codes || exitCode === null) return false;
    return codes.operator === 'In' ? codes.values.includes(exitCode) : !codes.values.includes(exitCode);
  });
  if (index >= 0) {
    return {
      reason: 'PodFailurePolicy',
      message: `Container ${container} for pod ${job.metadata?.namespace}/${podName} failed with exit code ${exitCode} matching FailJob rule at index ${index}`,
    };
  }
  return { reason: 'BackoffLimitExceeded', message: 'Job has reached the specified backoff limit' };
}

export async function startKubelet(options: KubeletOptions): Promise<KubeletStandIn> {
  const config = new KubeConfig();
  config.loadFromFile(options.kubeconfigAdmin);
  const batch = config.makeApiClient(BatchV1Api);
  const core = config.makeApiClient(CoreV1Api);
  const { namespace } = options;
  const programs: Record<string, string> = { 'sendense-nutanix': join(repoRoot, 'bin/sendense-nutanix'), ...options.programs };
  const runs = new Map<string, Running>();
  const seen = new Set<string>();
  const waiters = new Map<string, ((run: Running) => void)[]>();
  let stopped = false;

  const patchJobStatus = async (name: string, status: Record<string, unknown>) => {
    await batch.patchNamespacedJobStatus({ name, namespace, body: { status } }, mergePatchOptions());
  };

  async function resolveEnv(job: V1Job, podName: string): Promise<Record<string, string>> {
    const container = job.spec?.template.spec?.containers[0];
    const env: Record<string, string> = {};
    for (const variable of container?.env ?? []) {
      if (variable.value !== undefined) env[variable.name] = variable.value;
      const secretRef = variable.valueFrom?.secretKeyRef;
      if (secretRef) {
        const secret = await core.readNamespacedSecret({ name: secretRef.name ?? '', namespace });
        const data = secret.data?.[secretRef.key];
        if (data === undefined) {
          if (secretRef.optional) continue;
          throw new Error(`secret ${secretRef.name} has no key ${secretRef.key}`);
        }
        env[variable.name] = Buffer.from(data, 'base64').toString('utf8');
      }
      const fieldPath = variable.valueFrom?.fieldRef?.fieldPath;
      if (fieldPath === 'metadata.namespace') env[variable.name] = namespace;
      if (fieldPath === 'metadata.name') env[variable.name] = podName;
    }
    return env;
  }

  /**
   * The shell script run in the private mount namespace. Every source is first bound under the pod directory
   * (itself bound at podDir), then onto its mount path: mounting over /tmp cannot hide a later source under /tmp.
   */
  async function mountScript(job: V1Job, workDir: string): Promise<string> {
    const pod = job.spec?.template.spec;
    const container = pod?.containers[0];
    // The checkout is bound at podDir/app first: a volume over /tmp must not hide a checkout that lives under /tmp.
    await mkdir(join(workDir, 'app'));
    const lines: string[] = ['set -e', `mkdir -p ${podDir}`, `mount --bind ${shellQuote(workDir)} ${podDir}`, `mount --bind ${shellQuote(repoRoot)} ${podDir}/app`];
    for (const [i, mount] of (container?.volumeMounts ?? []).entries()) {
      const volume = pod?.volumes?.find((v) => v.name === mount.name);
      let hostDir: string | undefined;
      if (volume?.persistentVolumeClaim) hostDir = options.persistentVolumes[volume.persistentVolumeClaim.claimName];
      else if (volume?.emptyDir) hostDir = await mkdtemp(join(workDir, `empty-${mount.name}-`));
      if (!hostDir) throw new Error(`volume ${mount.name} of Job ${job.metadata?.name}: no host directory (claim not in persistentVolumes?)`);
      const staged = `${podDir}/volume-${i}`;
      await mkdir(join(workDir, `volume-${i}`));
      lines.push(`mount --bind ${shellQuote(hostDir)} ${staged}`);
    }
    for (const [i, mount] of (container?.volumeMounts ?? []).entries()) {
      // The mount point must exist; outside the private namespace only an empty directory is left.
      lines.push(`mkdir -p ${shellQuote(mount.mountPath)}`, `mount --bind ${podDir}/volume-${i} ${shellQuote(mount.mountPath)}`);
    }
    lines.push('exec "$@"');
    return lines.join('\n');
  }

  /** The Job's Pod, as the Job controller creates it (labels, owner) and as if a scheduler had bound it here. */
  async function createPod(job: V1Job, podName: string): Promise<void> {
    const name = job.metadata?.name ?? '';
    const uid = job.metadata?.uid ?? '';
    const labels = { ...job.spec?.template.metadata?.labels, 'batch.kubernetes.io/job-name': name, 'job-name': name, 'batch.kubernetes.io/controller-uid': uid, 'controller-uid': uid };
    await core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: podName, namespace, labels, ownerReferences: [{ apiVersion: 'batch/v1', kind: 'Job', name, uid, controller: true, blockOwnerDeletion: true }] },
        spec: { ...job.spec?.template.spec, containers: job.spec?.template.spec?.containers ?? [], nodeName: 'kubelet-stand-in' },
      },
    });
  }

  /** Pod status as a kubelet reports it: phase and the container's running / terminated state (with the termination message). */
  async function patchPodStatus(job: V1Job, podName: string, state: { startedAt: string; finished?: { exitCode: number | null; message: string } }): Promise<void> {
    const container = job.spec?.template.spec?.containers[0];
    const finished = state.finished;
    const exitCode = finished ? (finished.exitCode ?? 137) : undefined;
    const status = {
      phase: finished ? (exitCode === 0 ? 'Succeeded' : 'Failed') : 'Running',
      startTime: state.startedAt,
      hostIP: '127.0.0.1',
      containerStatuses: [
        {
          name: container?.name ?? '',
          image: container?.image ?? '',
          imageID: '',
          ready: !finished,
          started: !finished,
          restartCount: 0,
          state: finished
            ? { terminated: { exitCode, reason: exitCode === 0 ? 'Completed' : 'Error', ...(finished.message ? { message: finished.message } : {}), startedAt: state.startedAt, finishedAt: apiTime() } }
            : { running: { startedAt: state.startedAt } },
        },
      ],
    };
    await core.patchNamespacedPodStatus({ name: podName, namespace, body: { status } }, mergePatchOptions());
  }

  async function start(job: V1Job): Promise<void> {
    const name = job.metadata?.name ?? '';
    const podName = `${name.slice(0, 56)}-${randomBytes(3).toString('hex')}`;
    const container = job.spec?.template.spec?.containers[0];
    const command = [...(container?.command ?? []), ...(container?.args ?? [])];
    const workDir = await mkdtemp(join(tmpdir(), `kubelet-${name}-`));
    const terminationLog = join(workDir, 'termination-log');
    const startTime = apiTime();
    try {
      if (command.length === 0) throw new Error('the container has no command');
      const first = command[0] ?? '';
      const hostProgram = programs[first] ?? first;
      const program = hostProgram.startsWith(`${repoRoot}/`) ? `${podDir}/app/${hostProgram.slice(repoRoot.length + 1)}` : hostProgram;
      const env = await resolveEnv(job, podName);
      const serviceAccount = job.spec?.template.spec?.serviceAccountName ?? 'default';
      await copyFile(await options.kubeconfigFor(serviceAccount, namespace), join(workDir, 'kubeconfig'));
      const script = await mountScript(job, workDir);
      await writeFile(terminationLog, '');
      await createPod(job, podName);
      await patchPodStatus(job, podName, { startedAt: startTime });
      await patchJobStatus(name, { startTime, active: 1 });
      const child = spawn('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', script, 'sh', program, ...command.slice(1)], {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/tmp', ...options.extraEnv, ...env, KUBECONFIG: `${podDir}/kubeconfig`, SENDENSE_TERMINATION_LOG: `${podDir}/termination-log` },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      let output = '';
      const collect = (chunk: Buffer) => {
        output = (output + chunk.toString('utf8')).slice(-256 * 1024);
      };
      child.stdout?.on('data', collect);
      child.stderr?.on('data', collect);
      const exited = new Promise<number | null>((resolveExit) => child.once('exit', (code) => resolveExit(code)));
      const running: Running = {
        pid: child.pid ?? 0,
        child,
        workDir,
        deleted: false,
        podName,
        exited,
        output: () => output,
        terminationMessage: async () => (await readFile(terminationLog, 'utf8').catch(() => '')) || undefined,
      };
      runs.set(name, running);
      for (const wake of waiters.get(name) ?? []) wake(running);
      waiters.delete(name);
      void exited.then((code) => finish(job, running, code, startTime));
    } catch (err) {
      log.warn({ job: name, err: err instanceof Error ? err.message : String(err) }, 'job could not start');
      // A real pod would wait (e.g. CreateContainerConfigError); failing the Job at once keeps tests from hanging.
      await markFinished(name, false, startTime, { reason: 'StartFailed', message: err instanceof Error ? err.message : String(err) }).catch(() => undefined);
      await rm(workDir, { recursive: true, force: true });
    }
  }

  async function markFinished(name: string, succeeded: boolean, startTime: string, failure?: { reason: string; message: string }): Promise<void> {
    const reason = failure?.reason ?? '';
    const message = failure?.message ?? '';
    const now = apiTime();
    // The apiserver wants the "criteria met" condition beside the terminal one, as the Job controller writes them.
    const conditions = succeeded
      ? [
          { type: 'SuccessCriteriaMet', status: 'True', reason: 'CompletionsReached', message: 'Reached expected number of succeeded pods', lastProbeTime: now, lastTransitionTime: now },
          { type: 'Complete', status: 'True', reason: 'CompletionsReached', message: 'Reached expected number of succeeded pods', lastProbeTime: now, lastTransitionTime: now },
        ]
      : [
          { type: 'FailureTarget', status: 'True', reason, message, lastProbeTime: now, lastTransitionTime: now },
          { type: 'Failed', status: 'True', reason, message, lastProbeTime: now, lastTransitionTime: now },
        ];
    await patchJobStatus(name, {
      startTime,
      active: 0,
      ready: 0,
      ...(succeeded ? { succeeded: 1, completionTime: now } : { failed: 1 }),
      conditions,
    });
  }

  async function finish(job: V1Job, running: Running, code: number | null, startTime: string): Promise<void> {
    if (running.deleted || stopped) return;
    const name = job.metadata?.name ?? '';
    try {
      const message = ((await running.terminationMessage()) ?? '').slice(0, 4096);
      await patchPodStatus(job, running.podName, { startedAt: startTime, finished: { exitCode: code, message } });
      await markFinished(name, code === 0, startTime, code === 0 ? undefined : failureCondition(job, running.podName, code));
    } catch (err) {
      log.warn({ job: name, err: err instanceof Error ? err.message : String(err) }, 'job status not written');
    }
  }

  async function kill(running: Running): Promise<void> {
    if (running.child.exitCode !== null || running.child.signalCode !== null) return;
    const group = -running.pid;
    try {
      process.kill(group, 'SIGTERM');
    } catch {
      return;
    }
    const timer = setTimeout(() => {
      try {
        process.kill(group, 'SIGKILL');
      } catch {
        // already gone
      }
    }, 5000);
    await running.exited;
    clearTimeout(timer);
  }

  const informer = makeInformer<V1Job>(config, `/apis/batch/v1/namespaces/${namespace}/jobs`, () => batch.listNamespacedJob({ namespace }));
  const onJob = (job: V1Job) => {
    const name = job.metadata?.name;
    const uid = job.metadata?.uid;
    if (!name || !uid || seen.has(uid) || stopped || job.metadata?.deletionTimestamp) return;
    const finished = job.status?.conditions?.some((c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True');
    if (finished || job.spec?.suspend) return;
    seen.add(uid);
    void start(job);
  };
  informer.on('add', onJob);
  informer.on('update', onJob);
  // A Job deleted with the legacy "orphan" propagation keeps a finalizer (no garbage collector here to remove
  // it): a deletionTimestamp counts as deleted, as it does for a kubelet's pods.
  const onDeleted = (job: V1Job) => {
    const running = job.metadata?.name ? runs.get(job.metadata.name) : undefined;
    if (!running || running.deleted) return;
    running.deleted = true;
    // The process dies (kubelet), then the Pod goes (garbage collector; absent from the test bed).
    void kill(running).then(() => core.deleteNamespacedPod({ name: running.podName, namespace, gracePeriodSeconds: 0 }).catch(() => undefined));
  };
  informer.on('delete', onDeleted);
  informer.on('update', (job) => {
    if (job.metadata?.deletionTimestamp) onDeleted(job);
  });
  informer.on('error', (err) => {
    if (stopped) return;
    log.warn({ err: err instanceof Error ? err.message : String(err) }, 'job watch failed; restarting');
    setTimeout(() => void informer.start().catch(() => undefined), 500);
  });
  await informer.start();

  return {
    run: (jobName) => runs.get(jobName),
    started: (jobName, timeoutMs = 30_000) => {
      const existing = runs.get(jobName);
      if (existing) return Promise.resolve(existing);
      return new Promise<JobRun>((resolveRun, reject) => {
        const timer = setTimeout(() => reject(new Error(`Job ${jobName} did not start within ${timeoutMs} ms`)), timeoutMs);
        waiters.set(jobName, [
          ...(waiters.get(jobName) ?? []),
          (run) => {
            clearTimeout(timer);
            resolveRun(run);
          },
        ]);
      });
    },
    stop: async () => {
      stopped = true;
      await informer.stop();
      await Promise.all([...runs.values()].map((running) => kill(running)));
      await Promise.all([...runs.values()].map((running) => rm(running.workDir, { recursive: true, force: true })));
    },
  };
}
