/**
 * A small Kubernetes API client on top of @kubernetes/client-node: its KubeConfig authenticates and its fetch
 * library sends, while we choose the exact path, content type and body. That keeps status patches honest (the
 * generated clients default PATCH to JSON patch, operator-anchors §3) and maps every failure to an AppError.
 */
import { HttpMethod, IsomorphicFetchHttpLibrary, KubeConfig, RequestContext, Watch } from '@kubernetes/client-node';
import { z } from 'zod';
import { AppError, ErrorCode, abortError } from '../lib/errors.ts';

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

export class KubeApi {
  readonly config: KubeConfig;
  private readonly http = new IsomorphicFetchHttpLibrary();

  constructor(config: KubeConfig) {
    this.config = config;
  }

  /** From a kubeconfig file, or in-cluster / $KUBECONFIG / ~/.kube/config when none is given. */
  static fromKubeconfig(path?: string): KubeApi {
    const config = new KubeConfig();
    if (path) config.loadFromFile(path);
    else config.loadFromDefault();
    return new KubeApi(config);
  }

  private server(): string {
    const cluster = this.config.getCurrentCluster();
    if (!cluster) throw new AppError(ErrorCode.InvalidInput, 'the kubeconfig has no current cluster', { hint: 'set current-context in the kubeconfig or pass --kubeconfig' });
    return cluster.server;
  }

  /** Sends one request; resolves to the parsed JSON body (undefined when empty). */
  async request(req: KubeRequest): Promise<unknown> {
    const url = new URL(this.server() + req.path);
    for (const [key, value] of Object.entries(req.query ?? {})) if (value !== undefined) url.searchParams.set(key, String(value));
    const ctx = new RequestContext(url.toString(), HttpMethod[req.method]);
    if (req.body !== undefined) {
      ctx.setHeaderParam('Content-Type', req.contentType ?? 'application/json');
      ctx.setBody(JSON.stringify(req.body));
    }
    ctx.setHeaderParam('Accept', 'application/json');
    ctx.setSignal(req.signal);
    await this.config.applySecurityAuthentication(ctx);
    const what = `${req.method} ${req.path}`;
    let status: number;
    let text: string;
    try {
      const response = await this.http.send(ctx).toPromise();
      status = response.httpStatusCode;
      text = await response.body.text();
    } catch (err) {
      if (req.signal.aborted) throw abortError(req.signal, what);
      throw new AppError(ErrorCode.Unreachable, `${what}: cannot reach the Kubernetes API (${err instanceof Error ? err.message : String(err)})`, {
        retryable: true,
        cause: err,
        hint: 'check that the kube-apiserver is up and reachable from the operator',
      });
    }
    if (status >= 200 && status < 300) return text === '' ? undefined : (JSON.parse(text) as unknown);
    throw statusError(what, status, text);
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
   * Streams watch events from `resourceVersion` until the server closes, the watch fails or `signal` aborts.
   * Resolves when the stream ends cleanly; rejects with an AppError (410 Gone carries status 410).
   */
  async watch(type: ResourceType, namespace: string, resourceVersion: string, onEvent: (type: string, object: unknown) => void, signal: AbortSignal): Promise<void> {
    const path = resourcePath(type, namespace);
    const what = `WATCH ${path}`;
    if (signal.aborted) throw abortError(signal, what);
    await new Promise<void>((resolve, reject) => {
      let controller: AbortController | undefined;
      let finished = false;
      const onAbort = (): void => controller?.abort();
      signal.addEventListener('abort', onAbort, { once: true });
      const finish = (err: unknown): void => {
        if (finished) return;
        finished = true;
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) return reject(abortError(signal, what));
        if (err === null || err === undefined) return resolve();
        if (err instanceof AppError) return reject(err);
        const status = typeof err === 'object' && 'statusCode' in err && typeof err.statusCode === 'number' ? err.statusCode : undefined;
        if (status !== undefined) return reject(statusError(what, status, ''));
        // The client's own inactivity timeout (30 s) is a normal reconnect, not a failure.
        if (err instanceof Error && err.name === 'TimeoutError') return resolve();
        reject(new AppError(ErrorCode.Unreachable, `${what}: ${err instanceof Error ? err.message : String(err)}`, { retryable: true, cause: err }));
      };
      const onWatchEvent = (eventType: string, object: unknown): void => {
        if (eventType === 'ERROR') {
          const parsed = statusSchema.safeParse(object);
          const code = parsed.success ? (parsed.data.code ?? 500) : 500;
          // In-stream failure, typically 410 Gone (resourceVersion compacted): same classification as an HTTP status.
          finish(statusError(what, code, JSON.stringify({ message: parsed.success ? (parsed.data.message ?? '') : '' })));
          controller?.abort();
          return;
        }
        onEvent(eventType, object);
      };
      new Watch(this.config)
        .watch(path, { resourceVersion, allowWatchBookmarks: true, timeoutSeconds: 300 }, onWatchEvent, finish)
        .then((c) => {
          controller = c;
          if (signal.aborted || finished) c.abort();
        }, finish);
    });
  }
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
