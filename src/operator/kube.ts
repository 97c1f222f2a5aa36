/**
 * A small Kubernetes API client on node:https: we choose the exact path, content type and body, which keeps status
 * patches honest (generated clients default PATCH to JSON patch, operator-anchors §3), and every failure maps to
 * an AppError. It replaced @kubernetes/client-node in product code because importing that library alone cost
 * about 80 MiB of resident memory, more than a third of the operator's budget (issue 5).
 */
import { request as httpRequest, Agent as HttpAgent, type IncomingMessage } from 'node:http';
import { request as httpsRequest, Agent as HttpsAgent } from 'node:https';
import { text as readText } from 'node:stream/consumers';
import { z } from 'zod';
import { AppError, ErrorCode, abortError } from '../lib/errors.ts';
import { isUntrustedCertificateCode } from '../lib/tls.ts';
import { loadKubeConnection, type KubeConnection } from './kubeconfig.ts';

/** Where one kind lives in the API. */
export interface ResourceType {
  group: string;
  version: string;
  /** Lower-case plural used in URLs, e.g. nutanixclusters. */
  plural: string;
  kind: string;
}

export const PatchType = {
  Merge: 'application/merge-patch+json',
  Json: 'application/json-patch+json',
  Apply: 'application/apply-patch+yaml',
} as const;
export type PatchType = (typeof PatchType)[keyof typeof PatchType];

/** The metadata every object the runtime handles carries. */
export const objectMetaFields = z.looseObject({
  name: z.string(),
  namespace: z.string().optional(),
  uid: z.string().optional(),
  resourceVersion: z.string().optional(),
  generation: z.number().optional(),
  deletionTimestamp: z.string().optional(),
  finalizers: z.array(z.string()).optional(),
  labels: z.record(z.string(), z.string()).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
  ownerReferences: z
    .array(z.looseObject({ apiVersion: z.string(), kind: z.string(), name: z.string(), uid: z.string(), controller: z.boolean().optional() }))
    .optional(),
});
export const kubeObject = z.looseObject({ apiVersion: z.string().optional(), kind: z.string().optional(), metadata: objectMetaFields });
export type KubeObject = z.infer<typeof kubeObject>;

const listSchema = z.object({ metadata: z.looseObject({ resourceVersion: z.string() }), items: z.array(kubeObject) });
const statusSchema = z.looseObject({ message: z.string().optional(), reason: z.string().optional(), code: z.number().optional() });

export function apiVersionOf(type: ResourceType): string {
  return type.group === '' ? type.version : `${type.group}/${type.version}`;
}

/** URL path of a collection (no name) or of one object, optionally of a subresource such as `status`. */
export function resourcePath(type: ResourceType, namespace: string, name?: string, subresource?: string): string {
  const base = type.group === '' ? `/api/${type.version}` : `/apis/${type.group}/${type.version}`;
  let path = `${base}/namespaces/${encodeURIComponent(namespace)}/${type.plural}`;
  if (name !== undefined) path += `/${encodeURIComponent(name)}`;
  if (subresource !== undefined) path += `/${subresource}`;
  return path;
}

export interface KubeRequest {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  path: string;
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  contentType?: PatchType | 'application/json';
  /** Default application/json; e.g. `application/json;as=Table;g=meta.k8s.io;v=v1` for kubectl's table. */
  accept?: string;
  signal: AbortSignal;
}

/** HTTP status of a failed API call, kept on the AppError's cause so callers can tell 404 from 409 from 410. */
export class KubeStatusError extends Error {
  readonly status: number;
  readonly reason: string | undefined;
  constructor(status: number, message: string, reason: string | undefined) {
    super(message);
    this.name = 'KubeStatusError';
    this.status = status;
    this.reason = reason;
  }
}

/** The HTTP status behind an AppError from this client, if there was one. */
export function kubeStatusOf(err: unknown): number | undefined {
  return err instanceof AppError && err.cause instanceof KubeStatusError ? err.cause.status : undefined;
}

const watchEvent = z.object({ type: z.string(), object: z.unknown() });

export class KubeApi {
  readonly connection: KubeConnection;
  readonly #agent: HttpAgent;
  readonly #tls: boolean;

  constructor(connection: KubeConnection) {
    this.connection = connection;
    this.#tls = connection.server.startsWith('https:');
    // One keep-alive pool: requests reuse connections instead of paying a TLS handshake each (a watch holds one).
    const pool = { keepAlive: true, maxFreeSockets: 8 };
    this.#agent = this.#tls
      ? new HttpsAgent({
          ...pool,
          rejectUnauthorized: !connection.insecureSkipTlsVerify,
          ...(connection.ca ? { ca: connection.ca } : {}),
          ...(connection.cert && connection.key ? { cert: connection.cert, key: connection.key } : {}),
          ...(connection.tlsServerName ? { servername: connection.tlsServerName } : {}),
        })
      : new HttpAgent(pool);
  }

  /** From a kubeconfig file, else $KUBECONFIG, in-cluster, ~/.kube/config (see loadKubeConnection). */
  static fromKubeconfig(path?: string): KubeApi {
    return new KubeApi(loadKubeConnection(path ? { kubeconfig: path } : {}));
  }

  /** Closes the idle keep-alive connections; requests and watches in flight end with their own signals. */
  close(): void {
    this.#agent.destroy();
  }

  /** Sends one request; resolves to the parsed JSON body (undefined when empty). */
  async request(req: KubeRequest): Promise<unknown> {
    const what = `${req.method} ${req.path}`;
    let status: number;
    let text: string;
    try {
      const response = await this.#open(req, what);
      status = response.statusCode ?? 0;
      text = await readText(response);
    } catch (err) {
      throw this.#transportError(err, what, req.signal);
    }
    if (status < 200 || status >= 300) throw statusError(what, status, text);
    if (text === '') return undefined;
    try {
      return JSON.parse(text) as unknown;
    } catch (err) {
      throw new AppError(ErrorCode.BadResponse, `${what}: the API server answered HTTP ${status} with a body that is not JSON`, { cause: err, retryable: true });
    }
  }

  async get(type: ResourceType, namespace: string, name: string, signal: AbortSignal): Promise<unknown> {
    return this.request({ method: 'GET', path: resourcePath(type, namespace, name), signal });
  }

  /** The object, or undefined when it does not exist. */
  async getIfExists(type: ResourceType, namespace: string, name: string, signal: AbortSignal): Promise<unknown> {
    try {
      return await this.get(type, namespace, name, signal);
    } catch (err) {
      if (kubeStatusOf(err) === 404) return undefined;
      throw err;
    }
  }

  async list(type: ResourceType, namespace: string, signal: AbortSignal): Promise<{ resourceVersion: string; items: KubeObject[] }> {
    const list = listSchema.parse(await this.request({ method: 'GET', path: resourcePath(type, namespace), signal }));
    return { resourceVersion: list.metadata.resourceVersion, items: list.items };
  }

  async create(type: ResourceType, namespace: string, body: unknown, signal: AbortSignal): Promise<unknown> {
    return this.request({ method: 'POST', path: resourcePath(type, namespace), body, signal });
  }

  async replace(type: ResourceType, namespace: string, name: string, body: unknown, signal: AbortSignal): Promise<unknown> {
    return this.request({ method: 'PUT', path: resourcePath(type, namespace, name), body, signal });
  }

  async patch(
    type: ResourceType,
    namespace: string,
    name: string,
    patch: unknown,
    options: { patchType: PatchType; subresource?: string; fieldManager?: string; force?: boolean; signal: AbortSignal },
  ): Promise<unknown> {
    return this.request({
      method: 'PATCH',
      path: resourcePath(type, namespace, name, options.subresource),
      query: { fieldManager: options.fieldManager, force: options.force },
      body: patch,
      contentType: options.patchType,
      signal: options.signal,
    });
  }

  async delete(type: ResourceType, namespace: string, name: string, signal: AbortSignal): Promise<void> {
    try {
      await this.request({ method: 'DELETE', path: resourcePath(type, namespace, name), body: { propagationPolicy: 'Background' }, signal });
    } catch (err) {
      if (kubeStatusOf(err) !== 404) throw err;
    }
  }

  /**
   * Streams watch events (newline-delimited JSON, bookmarks included) from `resourceVersion` until the server
   * closes, the watch fails or `signal` aborts. Resolves when the stream ends cleanly (the server's timeout);
   * rejects with an AppError: an HTTP failure or an in-stream ERROR event (410 Gone carries status 410).
   */
  async watch(type: ResourceType, namespace: string, resourceVersion: string, onEvent: (type: string, object: unknown) => void, signal: AbortSignal): Promise<void> {
    const path = resourcePath(type, namespace);
    const what = `WATCH ${path}`;
    if (signal.aborted) throw abortError(signal, what);
    // Spread over 5-10 min like client-go's reflector, so informers do not all reconnect at the same moment.
    const timeoutSeconds = 300 + Math.floor(Math.random() * 300);
    const query = { watch: true, resourceVersion: resourceVersion || undefined, allowWatchBookmarks: true, timeoutSeconds };
    try {
      const response = await this.#open({ method: 'GET', path, query, signal }, what);
      const status = response.statusCode ?? 0;
      if (status < 200 || status >= 300) throw statusError(what, status, await readText(response));
      await forEachLine(response, (line) => {
        const event = parseWatchEvent(what, line);
        if (event.type === 'ERROR') {
          // In-stream failure, typically 410 Gone (resourceVersion compacted): same classification as an HTTP status.
          const parsed = statusSchema.safeParse(event.object);
          throw statusError(what, parsed.success ? (parsed.data.code ?? 500) : 500, JSON.stringify(event.object));
        }
        onEvent(event.type, event.object);
      });
    } catch (err) {
      throw this.#transportError(err, what, signal);
    }
  }

  /** Sends the request; resolves with the response once its status and headers arrived. */
  #open(req: KubeRequest, what: string): Promise<IncomingMessage> {
    const url = new URL(this.connection.server + req.path);
    for (const [key, value] of Object.entries(req.query ?? {})) if (value !== undefined) url.searchParams.set(key, String(value));
    const headers: Record<string, string> = { Accept: req.accept ?? 'application/json' };
    const authorization = this.connection.authorization();
    if (authorization !== undefined) headers.Authorization = authorization;
    let body: Buffer | undefined;
    if (req.body !== undefined) {
      body = Buffer.from(JSON.stringify(req.body));
      headers['Content-Type'] = req.contentType ?? 'application/json';
      headers['Content-Length'] = String(body.length);
    }
    const send = this.#tls ? httpsRequest : httpRequest;
    const attempt = (isRetry: boolean): Promise<IncomingMessage> =>
      new Promise((resolve, reject) => {
        const request = send(url, { method: req.method, headers, agent: this.#agent, signal: req.signal }, resolve);
        request.once('error', (err) => {
          // Node's documented keep-alive race: the server closed an idle connection just as a request went out on
          // it, and the request fails before any answer. It is sent once more on a fresh connection, except a
          // create (POST), which is not safe to repeat should the server have seen it after all.
          if (!isRetry && request.reusedSocket && errorCode(err) === 'ECONNRESET' && req.method !== 'POST' && !req.signal.aborted) {
            resolve(attempt(true));
            return;
          }
          reject(this.#transportError(err, what, req.signal));
        });
        request.end(body);
      });
    return attempt(false);
  }

  #transportError(err: unknown, what: string, signal: AbortSignal): AppError {
    if (signal.aborted) return abortError(signal, what);
    if (err instanceof AppError) return err;
    const code = errorCode(err);
    const detail = err instanceof Error ? err.message : String(err);
    if (isUntrustedCertificateCode(code)) {
      return new AppError(ErrorCode.TlsUntrusted, `${what}: the API server's certificate is not trusted (${detail})`, {
        cause: err,
        hint: `set certificate-authority(-data) in ${this.connection.source} to the CA that signed ${this.connection.server}'s certificate`,
      });
    }
    return new AppError(ErrorCode.Unreachable, `${what}: cannot reach the Kubernetes API at ${this.connection.server} (${detail})`, {
      retryable: true,
      cause: err,
      hint: 'check that the kube-apiserver is up and reachable from the operator',
    });
  }
}

function errorCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

/**
 * Calls `onLine` for every non-empty line of a byte stream as it arrives (a line may span chunks, a chunk may hold
 * many lines); a last line without its newline counts too. Resolves at the stream's end; rejects when it breaks
 * or `onLine` throws (the stream is destroyed then).
 */
export async function forEachLine(stream: AsyncIterable<Buffer>, onLine: (line: string) => void): Promise<void> {
  let pending: Buffer[] = [];
  const flush = (): void => {
    const line = Buffer.concat(pending).toString('utf8');
    pending = [];
    if (line.trim() !== '') onLine(line);
  };
  for await (const chunk of stream) {
    let start = 0;
    for (let newline = chunk.indexOf(10); newline !== -1; newline = chunk.indexOf(10, start)) {
      pending.push(chunk.subarray(start, newline));
      flush();
      start = newline + 1;
    }
    if (start < chunk.length) pending.push(chunk.subarray(start));
  }
  if (pending.length > 0) flush();
}

function parseWatchEvent(what: string, line: string): z.infer<typeof watchEvent> {
  let parsed: z.ZodSafeParseResult<z.infer<typeof watchEvent>>;
  try {
    parsed = watchEvent.safeParse(JSON.parse(line));
  } catch (err) {
    throw new AppError(ErrorCode.BadResponse, `${what}: a watch event is not JSON: ${line.slice(0, 200)}`, { cause: err, retryable: true });
  }
  if (!parsed.success) throw new AppError(ErrorCode.BadResponse, `${what}: a watch event lacks type or object: ${line.slice(0, 200)}`, { retryable: true });
  return parsed.data;
}

function statusError(what: string, status: number, text: string): AppError {
  let parsed: z.infer<typeof statusSchema> | undefined;
  try {
    const result = statusSchema.safeParse(JSON.parse(text));
    parsed = result.success ? result.data : undefined;
  } catch {
    parsed = undefined;
  }
  const detail = parsed?.message ?? text.slice(0, 300);
  const cause = new KubeStatusError(status, detail, parsed?.reason);
  const message = `${what}: HTTP ${status}${detail ? ` ${detail}` : ''}`;
  switch (status) {
    case 401:
      return new AppError(ErrorCode.Unauthenticated, message, { cause, hint: 'the operator’s ServiceAccount token is invalid or expired' });
    case 403:
      return new AppError(ErrorCode.Forbidden, message, { cause, hint: 'the operator’s Role lacks this permission; reinstall the chart’s RBAC' });
    case 404:
      return new AppError(ErrorCode.NotFound, message, { cause });
    case 409:
      // A stale resourceVersion or an existing name: re-reading and retrying resolves it.
      return new AppError(ErrorCode.Conflict, message, { cause, retryable: true });
    case 410:
      return new AppError(ErrorCode.Conflict, message, { cause, retryable: true, hint: 'the watch resourceVersion is too old; relist' });
    case 400:
    case 415:
    case 422:
      return new AppError(ErrorCode.InvalidInput, message, { cause });
    case 429:
      return new AppError(ErrorCode.RateLimited, message, { cause, retryable: true });
    default:
      return new AppError(status >= 500 ? ErrorCode.Unavailable : ErrorCode.BadResponse, message, { cause, retryable: status >= 500 });
  }
}
