/**
 * Where the Kubernetes API is and how to authenticate, resolved the way controller-runtime does: an explicit
 * kubeconfig file, else $KUBECONFIG (a list of files, merged first-wins like kubectl), else the Pod's
 * ServiceAccount (in-cluster), else ~/.kube/config. Supported are the fields kubectl writes for certificates and
 * tokens; exec and auth-provider plugins are refused with an error naming the field, since the operator and the
 * movers run in-cluster, where neither exists.
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { AppError, ErrorCode } from '../lib/errors.ts';

const serviceAccountDir = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Everything a request needs: the server, the TLS material and the current Authorization header. */
export interface KubeConnection {
  /** e.g. https://10.96.0.1:443 (no trailing slash). */
  server: string;
  ca: Buffer | undefined;
  cert: Buffer | undefined;
  key: Buffer | undefined;
  insecureSkipTlsVerify: boolean;
  tlsServerName: string | undefined;
  /** The Authorization header for the next request; token files are re-read as they rotate. */
  authorization(): string | undefined;
  /** The context's namespace, or the Pod's in-cluster. */
  namespace: string | undefined;
  /** Where this came from (a file or "in-cluster"), for error messages. */
  source: string;
}

const clusterFields = z.looseObject({
  server: z.string().min(1),
  'certificate-authority': z.string().optional(),
  'certificate-authority-data': z.string().optional(),
  'insecure-skip-tls-verify': z.boolean().optional(),
  'tls-server-name': z.string().optional(),
  'proxy-url': z.string().optional(),
});
const userFields = z.looseObject({
  token: z.string().optional(),
  tokenFile: z.string().optional(),
  'client-certificate': z.string().optional(),
  'client-certificate-data': z.string().optional(),
  'client-key': z.string().optional(),
  'client-key-data': z.string().optional(),
  username: z.string().optional(),
  password: z.string().optional(),
  exec: z.unknown().optional(),
  'auth-provider': z.unknown().optional(),
});
const contextFields = z.looseObject({ cluster: z.string().min(1), user: z.string().optional(), namespace: z.string().optional() });
const kubeconfigFile = z.looseObject({
  'current-context': z.string().nullish(),
  clusters: z.array(z.object({ name: z.string().min(1), cluster: clusterFields })).nullish(),
  users: z.array(z.object({ name: z.string().min(1), user: userFields.nullish() })).nullish(),
  contexts: z.array(z.object({ name: z.string().min(1), context: contextFields })).nullish(),
});

type ClusterFields = z.infer<typeof clusterFields>;
type UserFields = z.infer<typeof userFields>;
type ContextFields = z.infer<typeof contextFields>;
/** An entry with the directory of the file that defined it: relative paths resolve against it, as in kubectl. */
interface Located<T> {
  fields: T;
  dir: string;
  file: string;
}

export interface LoadOptions {
  /** An explicit kubeconfig file (the --kubeconfig flag). */
  kubeconfig?: string;
  env?: NodeJS.ProcessEnv;
  /** The mounted ServiceAccount (tests point it at a temporary directory). */
  serviceAccountDir?: string;
  /** How long a token read from a file is reused (default 60 s, client-go's period; bound tokens rotate). */
  tokenCacheMs?: number;
}

/** The connection by controller-runtime's precedence: --kubeconfig, $KUBECONFIG, in-cluster, ~/.kube/config. */
export function loadKubeConnection(options: LoadOptions = {}): KubeConnection {
  const env = options.env ?? process.env;
  if (options.kubeconfig) return connectionFromKubeconfigFiles([options.kubeconfig], options);
  const listed = (env.KUBECONFIG ?? '').split(delimiter).filter((p) => p !== '');
  if (listed.length > 0) return connectionFromKubeconfigFiles(listed, options);
  const saDir = options.serviceAccountDir ?? serviceAccountDir;
  if (env.KUBERNETES_SERVICE_HOST && existsSync(join(saDir, 'token'))) return inClusterConnection(options);
  const home = join(env.HOME ?? homedir(), '.kube', 'config');
  if (existsSync(home)) return connectionFromKubeconfigFiles([home], options);
  throw new AppError(ErrorCode.InvalidInput, 'no Kubernetes API configuration found', {
    hint: `pass --kubeconfig, set KUBECONFIG, or run in a Pod with a ServiceAccount token at ${saDir}/token`,
  });
}

/** The Pod's ServiceAccount: KUBERNETES_SERVICE_HOST/PORT, and token, ca.crt and namespace from the mounted volume. */
export function inClusterConnection(options: LoadOptions = {}): KubeConnection {
  const env = options.env ?? process.env;
  const dir = options.serviceAccountDir ?? serviceAccountDir;
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) {
    throw new AppError(ErrorCode.InvalidInput, 'in-cluster configuration: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set', {
      hint: 'run inside a Pod, or pass --kubeconfig',
    });
  }
  const token = cachedFileToken(join(dir, 'token'), 'the ServiceAccount token', options.tokenCacheMs);
  const namespaceFile = join(dir, 'namespace');
  return {
    server: `https://${host.includes(':') ? `[${host}]` : host}:${port}`,
    ca: readRequired(join(dir, 'ca.crt'), 'the ServiceAccount ca.crt'),
    cert: undefined,
    key: undefined,
    insecureSkipTlsVerify: false,
    tlsServerName: undefined,
    authorization: () => `Bearer ${token()}`,
    namespace: existsSync(namespaceFile) ? readFileSync(namespaceFile, 'utf8').trim() : undefined,
    source: 'in-cluster',
  };
}

/** Merges the files first-wins (as kubectl does with $KUBECONFIG) and resolves the current context. */
export function connectionFromKubeconfigFiles(files: string[], options: LoadOptions = {}): KubeConnection {
  const clusters = new Map<string, Located<ClusterFields>>();
  const users = new Map<string, Located<UserFields>>();
  const contexts = new Map<string, ContextFields>();
  let currentContext: string | undefined;
  for (const file of files) {
    const config = parseKubeconfigFile(file);
    const dir = dirname(resolve(file));
    currentContext ||= config['current-context'] ?? undefined;
    for (const c of config.clusters ?? []) if (!clusters.has(c.name)) clusters.set(c.name, { fields: c.cluster, dir, file });
    for (const u of config.users ?? []) if (!users.has(u.name)) users.set(u.name, { fields: u.user ?? {}, dir, file });
    for (const c of config.contexts ?? []) if (!contexts.has(c.name)) contexts.set(c.name, c.context);
  }
  const source = files.join(delimiter);
  if (!currentContext) {
    throw new AppError(ErrorCode.InvalidInput, `kubeconfig ${source}: current-context is not set`, { hint: 'set current-context (kubectl config use-context NAME)' });
  }
  const context = contexts.get(currentContext);
  if (!context) {
    throw new AppError(ErrorCode.InvalidInput, `kubeconfig ${source}: current-context "${currentContext}" is not in contexts`, { hint: 'add the context or fix current-context' });
  }
  const cluster = clusters.get(context.cluster);
  if (!cluster) {
    throw new AppError(ErrorCode.InvalidInput, `kubeconfig ${source}: contexts[${currentContext}].context.cluster "${context.cluster}" is not in clusters`, {
      hint: 'add the cluster or fix the context',
    });
  }
  const user = context.user === undefined ? undefined : users.get(context.user);
  if (context.user !== undefined && !user) {
    throw new AppError(ErrorCode.InvalidInput, `kubeconfig ${source}: contexts[${currentContext}].context.user "${context.user}" is not in users`, {
      hint: 'add the user or fix the context',
    });
  }
  return { ...clusterSettings(cluster), ...userSettings(user, options.tokenCacheMs), namespace: context.namespace, source };
}

function parseKubeconfigFile(file: string): z.infer<typeof kubeconfigFile> {
  let document: unknown;
  try {
    document = parseYaml(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new AppError(ErrorCode.InvalidInput, `kubeconfig ${file}: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
      hint: 'pass a readable kubeconfig (YAML or JSON) with --kubeconfig or KUBECONFIG',
    });
  }
  const parsed = kubeconfigFile.safeParse(document ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new AppError(ErrorCode.InvalidInput, `kubeconfig ${file}: ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}`, {
      hint: 'fix that field; `kubectl config view` shows the expected shape',
    });
  }
  return parsed.data;
}

function clusterSettings(entry: Located<ClusterFields>): Pick<KubeConnection, 'server' | 'ca' | 'insecureSkipTlsVerify' | 'tlsServerName'> {
  const c = entry.fields;
  if (c['proxy-url']) {
    throw new AppError(ErrorCode.Unsupported, `kubeconfig ${entry.file}: clusters[].cluster.proxy-url is not supported`, {
      hint: 'reach the API server directly (in-cluster, or a kubeconfig without proxy-url)',
    });
  }
  const server = c.server.replace(/\/+$/, '');
  if (!/^https?:\/\//.test(server)) {
    throw new AppError(ErrorCode.InvalidInput, `kubeconfig ${entry.file}: clusters[].cluster.server "${c.server}" is not an http(s) URL`, {
      hint: 'use e.g. https://10.0.0.1:6443',
    });
  }
  return {
    server,
    ca: material(entry, c['certificate-authority-data'], c['certificate-authority'], 'clusters[].cluster.certificate-authority'),
    insecureSkipTlsVerify: c['insecure-skip-tls-verify'] ?? false,
    tlsServerName: c['tls-server-name'],
  };
}

function userSettings(entry: Located<UserFields> | undefined, tokenCacheMs: number | undefined): Pick<KubeConnection, 'cert' | 'key' | 'authorization'> {
  if (!entry) return { cert: undefined, key: undefined, authorization: () => undefined };
  const u = entry.fields;
  for (const plugin of ['exec', 'auth-provider'] as const) {
    if (u[plugin] !== undefined) {
      throw new AppError(ErrorCode.Unsupported, `kubeconfig ${entry.file}: users[].user.${plugin} (credential plugins) is not supported`, {
        hint: 'use a token, tokenFile or client certificate (in-cluster the ServiceAccount token is used)',
      });
    }
  }
  const cert = material(entry, u['client-certificate-data'], u['client-certificate'], 'users[].user.client-certificate');
  const key = material(entry, u['client-key-data'], u['client-key'], 'users[].user.client-key');
  if ((cert === undefined) !== (key === undefined)) {
    throw new AppError(ErrorCode.InvalidInput, `kubeconfig ${entry.file}: users[].user has a client certificate without its key or the reverse`, {
      hint: 'set both client-certificate(-data) and client-key(-data)',
    });
  }
  let authorization = (): string | undefined => undefined;
  if (u.token) {
    const header = `Bearer ${u.token}`;
    authorization = () => header;
  } else if (u.tokenFile) {
    const token = cachedFileToken(resolve(entry.dir, u.tokenFile), 'users[].user.tokenFile', tokenCacheMs);
    authorization = () => `Bearer ${token()}`;
  } else if (u.username !== undefined && u.password !== undefined) {
    const header = `Basic ${Buffer.from(`${u.username}:${u.password}`).toString('base64')}`;
    authorization = () => header;
  }
  return { cert, key, authorization };
}

/** Inline base64 data wins over a file, as in kubectl. */
function material(entry: Located<unknown>, data: string | undefined, file: string | undefined, field: string): Buffer | undefined {
  if (data) return Buffer.from(data, 'base64');
  if (file) return readRequired(resolve(entry.dir, file), `${field} of kubeconfig ${entry.file}`);
  return undefined;
}

function readRequired(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new AppError(ErrorCode.InvalidInput, `cannot read ${what} (${path}): ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
      hint: 'mount or point to a readable file',
    });
  }
}

/**
 * A token read from a file and re-read every `cacheMs`: bound ServiceAccount tokens are rotated by the kubelet
 * (client-go re-reads every minute). A failed re-read keeps the previous token; a failed first read throws.
 */
function cachedFileToken(path: string, what: string, cacheMs = 60_000): () => string {
  let token: string | undefined;
  let readAt = 0;
  return () => {
    if (token !== undefined && Date.now() - readAt < cacheMs) return token;
    try {
      const fresh = readFileSync(path, 'utf8').trim();
      if (fresh === '') throw new Error('the file is empty');
      token = fresh;
      readAt = Date.now();
    } catch (err) {
      if (token !== undefined) return token;
      throw new AppError(ErrorCode.Unauthenticated, `cannot read ${what} (${path}): ${err instanceof Error ? err.message : String(err)}`, {
        cause: err,
        hint: 'mount the ServiceAccount token, or fix the tokenFile path',
      });
    }
    return token;
  };
}
