/**
 * Kubernetes test bed for the e2e tests (envtest style): a real etcd and a real kube-apiserver, built from pinned
 * upstream Go modules by scripts/testbed/build-binaries.sh, with secure serving on 127.0.0.1, RBAC, and
 * service-account tokens. There is no kubelet and no controller manager: nothing runs Pods, finishes namespace
 * deletion or garbage-collects by owner reference.
 *
 * With SENDENSE_E2E_KUBECONFIG=<path> the same API is served by that cluster instead (e.g. kind); see docs/testbed.md.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { access, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CoreV1Api, KubeConfig, Observable, type ConfigurationOptions, type ObservableMiddleware } from '@kubernetes/client-node';
import { stringify } from 'yaml';
import { z } from 'zod';
import { AppError, ErrorCode, throwIfAborted } from '../../src/lib/errors.ts';
import { createLogger } from '../../src/lib/log.ts';
import { freePort } from './ports.ts';
import { createTestbedPki } from './testbed-pki.ts';

const log = createLogger({ name: 'testbed' });
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const buildScript = join(repoRoot, 'scripts/testbed/build-binaries.sh');

export interface TestbedOptions {
  /** Authorize with RBAC (default true); false means AlwaysAllow. Ignored for an external cluster. */
  rbac?: boolean;
  signal?: AbortSignal;
}

export interface Testbed {
  /** Path of a kubeconfig with cluster-admin rights (system:masters client certificate, or the external one). */
  kubeconfigAdmin: string;
  /** https URL of the kube-apiserver. */
  server: string;
  /** PEM of the CA that signed the apiserver's serving certificate ('' when the external kubeconfig skips TLS verification). */
  caPem: string;
  /** True when SENDENSE_E2E_KUBECONFIG chose an existing cluster instead of a local etcd + kube-apiserver. */
  external: boolean;
  /**
   * Writes a kubeconfig authenticating as an existing ServiceAccount with a token from the TokenRequest API, so
   * code run under it gets exactly that account's RBAC rights. Returns the file's path.
   */
  kubeconfigFor(serviceAccount: string, namespace: string, options?: { expirationSeconds?: number; signal?: AbortSignal }): Promise<string>;
  /** Stops the processes this test bed started and removes its temp dir. Safe to call twice. */
  stop(): Promise<void>;
}

export interface TestbedBinaries {
  kubeApiserver: string;
  kubectl: string;
  etcd: string;
  helm: string;
}

/** Where build-binaries.sh puts the binaries; the versions are the pins in scripts/testbed/<wrapper>/go.mod. */
export async function testbedBinaries(): Promise<TestbedBinaries> {
  const bin = join(process.env.SENDENSE_CACHE ?? join(homedir(), '.cache/sendense-nutanix'), 'bin');
  const pin = async (wrapper: string, module: string): Promise<string> => {
    const goMod = await readFile(join(repoRoot, 'scripts/testbed', wrapper, 'go.mod'), 'utf8');
    const escaped = module.replaceAll('.', '\\.');
    const version = new RegExp(`^\\s*(?:require\\s+)?${escaped}\\s+(v\\S+)`, 'm').exec(goMod)?.[1];
    if (!version) throw new AppError(ErrorCode.Internal, `scripts/testbed/${wrapper}/go.mod does not require ${module}`);
    return version;
  };
  const kubernetes = await pin('kubernetes', 'k8s.io/kubernetes');
  return {
    kubeApiserver: join(bin, `kube-apiserver-${kubernetes}`),
    kubectl: join(bin, `kubectl-${kubernetes}`),
    etcd: join(bin, `etcd-${await pin('etcd', 'go.etcd.io/etcd/server/v3')}`),
    helm: join(bin, `helm-${await pin('helm', 'helm.sh/helm/v3')}`),
  };
}

/** The binaries, or an error naming the command that builds them (a cold build takes minutes, too long for a test hook). */
export async function requireTestbedBinaries(): Promise<TestbedBinaries> {
  const binaries = await testbedBinaries();
  for (const path of Object.values(binaries)) {
    try {
      await access(path);
    } catch {
      throw new AppError(ErrorCode.Unavailable, `test bed binary ${path} is missing`, {
        hint: `run ${buildScript} (or make setup) once; it builds kube-apiserver, kubectl, etcd and helm into the cache`,
      });
    }
  }
  return binaries;
}

export async function startTestbed(options: TestbedOptions = {}): Promise<Testbed> {
  const signal = options.signal ?? new AbortController().signal;
  const external = process.env.SENDENSE_E2E_KUBECONFIG;
  return external ? useExternalCluster(external, signal) : startLocalCluster(options.rbac ?? true, signal);
}

/** Request options that give one @kubernetes/client-node (v2 object API) call an AbortSignal. */
export function withSignal(signal: AbortSignal): ConfigurationOptions {
  const middleware: ObservableMiddleware = {
    pre: (context) => {
      context.setSignal(signal);
      return new Observable(Promise.resolve(context));
    },
    post: (context) => new Observable(Promise.resolve(context)),
  };
  return { middleware: [middleware], middlewareMergeStrategy: 'append' };
}

interface ClusterAccess {
  server: string;
  caPem: string;
  insecureSkipTlsVerify: boolean;
}

const tokenRequestStatus = z.object({ token: z.string().min(1) });

function serviceAccountKubeconfigFactory(access: ClusterAccess, adminKubeconfig: string, dir: string, defaultSignal: AbortSignal) {
  return async (serviceAccount: string, namespace: string, options: { expirationSeconds?: number; signal?: AbortSignal } = {}) => {
    const signal = options.signal ?? defaultSignal;
    const admin = new KubeConfig();
    admin.loadFromFile(adminKubeconfig);
    const response = await admin.makeApiClient(CoreV1Api).createNamespacedServiceAccountToken(
      {
        name: serviceAccount,
        namespace,
        body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { audiences: [], expirationSeconds: options.expirationSeconds ?? 3600 } },
      },
      withSignal(signal),
    );
    const { token } = tokenRequestStatus.parse(response.status);
    const path = join(dir, `sa-${namespace}-${serviceAccount}.kubeconfig`);
    // Written aside and renamed: concurrent calls for one account (several Jobs starting) must never expose a
    // truncated file to a reader.
    const temporary = `${path}.${randomBytes(4).toString('hex')}`;
    await writeFile(temporary, kubeconfigYaml(access, `system:serviceaccount:${namespace}:${serviceAccount}`, { token }), { mode: 0o600 });
    await rename(temporary, path);
    return path;
  };
}

function kubeconfigYaml(access: ClusterAccess, userName: string, user: Record<string, string>): string {
  const cluster: Record<string, string | boolean> = { server: access.server };
  if (access.caPem) cluster['certificate-authority-data'] = Buffer.from(access.caPem).toString('base64');
  if (access.insecureSkipTlsVerify) cluster['insecure-skip-tls-verify'] = true;
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'testbed', cluster }],
    users: [{ name: userName, user }],
    contexts: [{ name: 'testbed', context: { cluster: 'testbed', user: userName } }],
    'current-context': 'testbed',
  });
}

async function useExternalCluster(kubeconfigPath: string, signal: AbortSignal): Promise<Testbed> {
  const config = new KubeConfig();
  config.loadFromFile(kubeconfigPath);
  const cluster = config.getCurrentCluster();
  if (!cluster) {
    throw new AppError(ErrorCode.InvalidInput, `SENDENSE_E2E_KUBECONFIG=${kubeconfigPath} has no current cluster`, {
      hint: 'set current-context in that kubeconfig (kubectl config use-context NAME)',
    });
  }
  let caPem = '';
  if (cluster.caData) caPem = Buffer.from(cluster.caData, 'base64').toString('utf8');
  else if (cluster.caFile) caPem = await readFile(cluster.caFile, 'utf8');
  const access = { server: cluster.server, caPem, insecureSkipTlsVerify: cluster.skipTLSVerify };
  const dir = await mkdtemp(join(tmpdir(), 'sendense-testbed-'));
  log.info({ server: access.server }, 'test bed: using the external cluster of SENDENSE_E2E_KUBECONFIG');
  return {
    kubeconfigAdmin: kubeconfigPath,
    server: access.server,
    caPem,
    external: true,
    kubeconfigFor: serviceAccountKubeconfigFactory(access, kubeconfigPath, dir, signal),
    stop: () => rm(dir, { recursive: true, force: true }),
  };
}

interface ManagedProcess {
  name: string;
  child: ChildProcess;
  logFile: string;
  exited: Promise<void>;
  running(): boolean;
}

function startProcess(name: string, binary: string, args: string[], logFile: string): ManagedProcess {
  // setpriv (util-linux) execs the binary with a parent-death signal: a test worker that is killed outright, so
  // that neither stop() nor an exit handler runs, still takes etcd and kube-apiserver down with it.
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', binary, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const output = createWriteStream(logFile);
  child.stdout?.pipe(output);
  child.stderr?.pipe(output);
  let running = true;
  const exited = new Promise<void>((resolveExit) => {
    child.once('exit', () => {
      running = false;
      resolveExit();
    });
    child.once('error', (err) => {
      output.write(`${name} could not be started: ${err.message}\n`);
      running = false;
      resolveExit();
    });
  });
  return { name, child, logFile, exited, running: () => running };
}

async function logTail(path: string, lines = 25): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

async function stopProcess(proc: ManagedProcess): Promise<void> {
  if (!proc.running()) return;
  proc.child.kill('SIGTERM');
  const killer = setTimeout(() => proc.child.kill('SIGKILL'), 10_000);
  await proc.exited;
  clearTimeout(killer);
}

/** GET over TLS with the admin client certificate; resolves with the status code, or undefined while nothing listens. */
function probe(url: string, tls: { ca: string; cert: string; key: string }, signal: AbortSignal): Promise<number | undefined> {
  return new Promise((resolveStatus, reject) => {
    const req = httpsRequest(url, { ...tls, signal }, (res) => {
      res.resume();
      res.on('end', () => resolveStatus(res.statusCode));
    });
    // Not ready yet: nothing listens, or (EPROTO) another process took the picked port in the meantime and speaks no
    // TLS there; our server then exits with "address already in use" and startLocalCluster starts again.
    const notYet = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPROTO']);
    req.on('error', (err: NodeJS.ErrnoException) => (notYet.has(err.code ?? '') ? resolveStatus(undefined) : reject(err)));
    req.end();
  });
}

/** Polls until `ready()` holds; fails as soon as the process exits, with the tail of its log. */
async function waitUntilReady(proc: ManagedProcess, ready: () => Promise<boolean>, signal: AbortSignal, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    throwIfAborted(signal, `waiting for ${proc.name}`);
    if (!proc.running()) {
      throw new AppError(ErrorCode.Unavailable, `${proc.name} exited during start-up:\n${await logTail(proc.logFile)}`, {
        hint: `see ${proc.logFile}`,
      });
    }
    if (await ready()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new AppError(ErrorCode.Timeout, `${proc.name} was not ready within ${timeoutMs / 1000}s:\n${await logTail(proc.logFile)}`, {
    retryable: true,
    hint: `see ${proc.logFile}`,
  });
}

const etcdHealth = z.object({ health: z.string() });

async function startLocalCluster(rbac: boolean, signal: AbortSignal): Promise<Testbed> {
  const binaries = await requireTestbedBinaries();
  for (let attempt = 1; ; attempt++) {
    try {
      return await startLocalClusterOnce(binaries, rbac, signal);
    } catch (err) {
      // Ports are picked free before etcd and kube-apiserver bind them; another process may take one in between.
      if (attempt < 3 && err instanceof AppError && err.message.includes('address already in use')) {
        log.warn({ attempt }, 'test bed: a picked port was taken meanwhile; starting again on other ports');
        continue;
      }
      throw err;
    }
  }
}

async function startLocalClusterOnce(binaries: TestbedBinaries, rbac: boolean, signal: AbortSignal): Promise<Testbed> {
  const started = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'sendense-testbed-'));
  const processes: ManagedProcess[] = [];
  // A test worker that dies without calling stop() must not leave etcd and kube-apiserver behind.
  const killOnExit = () => processes.forEach((p) => p.child.kill('SIGKILL'));
  process.once('exit', killOnExit);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    // apiserver first: it would otherwise log a storm of etcd connection errors while shutting down.
    for (const proc of [...processes].reverse()) await stopProcess(proc);
    process.removeListener('exit', killOnExit);
    await rm(dir, { recursive: true, force: true });
  };

  try {
    const pki = await createTestbedPki(dir, signal);
    const [etcdClientPort, etcdPeerPort, apiserverPort] = [await freePort(), await freePort(), await freePort()];
    const etcdUrl = `http://127.0.0.1:${etcdClientPort}`;
    const etcd = startProcess(
      'etcd',
      binaries.etcd,
      [
        '--name=testbed',
        `--data-dir=${join(dir, 'etcd')}`,
        `--listen-client-urls=${etcdUrl}`,
        `--advertise-client-urls=${etcdUrl}`,
        `--listen-peer-urls=http://127.0.0.1:${etcdPeerPort}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeerPort}`,
        `--initial-cluster=testbed=http://127.0.0.1:${etcdPeerPort}`,
        // Throw-away data: skipping fsync makes every write (and so every test) much faster.
        '--unsafe-no-fsync',
        '--log-level=warn',
      ],
      join(dir, 'etcd.log'),
    );
    processes.push(etcd);
    await waitUntilReady(
      etcd,
      async () => {
        const res = await fetch(`${etcdUrl}/health`, { signal }).catch(() => undefined);
        return res?.ok === true && etcdHealth.parse(await res.json()).health === 'true';
      },
      signal,
    );

    const server = `https://127.0.0.1:${apiserverPort}`;
    const apiserver = startProcess(
      'kube-apiserver',
      binaries.kubeApiserver,
      [
        `--etcd-servers=${etcdUrl}`,
        '--bind-address=127.0.0.1',
        '--advertise-address=127.0.0.1',
        `--secure-port=${apiserverPort}`,
        `--cert-dir=${dir}`,
        `--tls-cert-file=${pki.servingCert}`,
        `--tls-private-key-file=${pki.servingKey}`,
        `--client-ca-file=${pki.caCert}`,
        `--authorization-mode=${rbac ? 'RBAC' : 'AlwaysAllow'}`,
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--service-account-key-file=${pki.serviceAccountPublicKey}`,
        `--service-account-signing-key-file=${pki.serviceAccountPrivateKey}`,
        '--service-cluster-ip-range=10.0.0.0/24',
        // ServiceAccount admission needs the token and service-account controllers (no `default` SA exists here).
        '--disable-admission-plugins=ServiceAccount',
        '--profiling=false',
      ],
      join(dir, 'kube-apiserver.log'),
    );
    processes.push(apiserver);
    const adminTls = { ca: pki.caPem, cert: await readFile(pki.adminCert, 'utf8'), key: await readFile(pki.adminKey, 'utf8') };
    await waitUntilReady(apiserver, async () => (await probe(`${server}/readyz`, adminTls, signal)) === 200, signal);

    const access = { server, caPem: pki.caPem, insecureSkipTlsVerify: false };
    const kubeconfigAdmin = join(dir, 'admin.kubeconfig');
    await writeFile(
      kubeconfigAdmin,
      kubeconfigYaml(access, 'sendense-testbed-admin', {
        'client-certificate-data': Buffer.from(adminTls.cert).toString('base64'),
        'client-key-data': Buffer.from(adminTls.key).toString('base64'),
      }),
      { mode: 0o600 },
    );
    log.info({ server, dir, rbac, startMs: Date.now() - started }, 'test bed: etcd and kube-apiserver ready');
    return {
      kubeconfigAdmin,
      server,
      caPem: pki.caPem,
      external: false,
      kubeconfigFor: serviceAccountKubeconfigFactory(access, kubeconfigAdmin, dir, signal),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
