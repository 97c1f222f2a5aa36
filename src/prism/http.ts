/**
 * The HTTP layer under every Prism call: TLS policy, session cookies with one re-login on 401, retries with
 * backoff + jitter (only for calls the caller marks as safe to repeat), Nutanix error bodies turned into typed
 * AppErrors, and zod parsing of every body. Raw axios errors never leave this file: they carry credentials.
 */
import https from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import axios, { type AxiosInstance, type AxiosResponse, type RawAxiosRequestHeaders } from 'axios';
import type { z } from 'zod';
import { AppError, ErrorCode, abortError, isAppError } from '../lib/errors.ts';
import { isUntrustedCertificateCode } from '../lib/tls.ts';
import { RequestRateLimiter } from './rate-limit.ts';
import type { Logger } from '../lib/log.ts';
import { v3ErrorBodySchema, v4ErrorBodySchema } from './schemas.ts';

export interface RetryPolicy {
  /** Total attempts for a retry-safe call, the first included. */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** Longest Retry-After / X-Ratelimit-Reset wait honoured inside one call. */
  maxServerWaitMs: number;
}

export const defaultRetryPolicy: RetryPolicy = { attempts: 6, baseDelayMs: 200, maxDelayMs: 10_000, maxServerWaitMs: 60_000 };

export interface HttpOptions {
  endpoint: string;
  username: string;
  password: string;
  caPem?: string;
  insecureSkipTlsVerify?: boolean;
  logger: Logger;
  retry?: Partial<RetryPolicy>;
  /** At most this many requests per second, retries and logins included. */
  requestsPerSecond?: number;
  /** Per-attempt limit; a hung connection becomes a retryable timeout. */
  requestTimeoutMs?: number;
}

export interface PrismRequest<S extends z.ZodType> {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  /** Another origin on the same CA (v4 CRT goes to the cluster IP); such calls carry no PC session. */
  baseUrl?: string;
  body?: unknown;
  query?: Record<string, string | number | undefined>;
  headers?: Record<string, string>;
  schema: S;
  /**
   * True only when repeating the call cannot do anything twice: reads, list POSTs, creates carrying an
   * idempotency key, deletes that treat "already gone" as done. Everything else is sent exactly once.
   */
  retrySafe: boolean;
  /** False for calls authenticated by their own header (the CRT cluster JWT cookie). */
  session?: boolean;
  signal?: AbortSignal;
  /** What the call is for, used in error messages ("list VMs"). */
  what: string;
}

export interface PrismResponse<T> {
  status: number;
  data: T;
  headers: Record<string, string>;
}

const retryableStatus = new Set([408, 429, 502, 503, 504]);
/** Failures while the request was in flight: the same call may well succeed on a fresh connection. */
const transientNetworkCodes = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ETIMEDOUT', 'ERR_SOCKET_CONNECTION_TIMEOUT', 'EAI_AGAIN']);
/** The endpoint cannot be reached at all: retrying within one call does not help, a later reconcile might. */
const unreachableCodes = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN']);

export class PrismHttp {
  readonly endpoint: string;
  private readonly axios: AxiosInstance;
  private readonly basicAuth: string;
  private readonly log: Logger;
  private readonly retry: RetryPolicy;
  /** How long one request may take (a long poll must answer well within it). */
  readonly requestTimeoutMs: number;
  private readonly limiter: RequestRateLimiter | undefined;
  private readonly agent: https.Agent;
  /** Session cookies by name, as set by Prism; sent instead of Basic auth once present. */
  private cookies = new Map<string, string>();

  constructor(options: HttpOptions) {
    this.endpoint = options.endpoint.replace(/\/+$/, '');
    this.log = options.logger;
    this.retry = { ...defaultRetryPolicy, ...options.retry };
    this.requestTimeoutMs = options.requestTimeoutMs ?? 60_000;
    this.limiter = options.requestsPerSecond ? new RequestRateLimiter(options.requestsPerSecond) : undefined;
    this.basicAuth = `Basic ${Buffer.from(`${options.username}:${options.password}`).toString('base64')}`;
    this.agent = new https.Agent({
      keepAlive: true,
      rejectUnauthorized: !options.insecureSkipTlsVerify,
      ...(options.caPem ? { ca: options.caPem } : {}),
    });
    this.axios = axios.create({
      httpsAgent: this.agent,
      // Statuses are judged below, so every response comes back instead of throwing.
      validateStatus: () => true,
      maxRedirects: 0,
      responseType: 'text',
      transformResponse: [(data: unknown) => data],
      headers: { Accept: 'application/json' },
    });
  }

  async request<S extends z.ZodType>(req: PrismRequest<S>): Promise<PrismResponse<z.infer<S>>> {
    const attempts = req.retrySafe ? this.retry.attempts : 1;
    let reloggedIn = false;
    for (let attempt = 1; ; attempt++) {
      if (req.signal?.aborted) throw abortError(req.signal, req.what);
      const usedCookies = req.session !== false && this.cookies.size > 0;
      let response: AxiosResponse<string>;
      try {
        response = await this.send(req, usedCookies);
      } catch (err) {
        const appErr = this.transportError(err, req);
        if (appErr.retryable && attempt < attempts && appErr.code !== ErrorCode.Unreachable && appErr.code !== ErrorCode.TlsUntrusted) {
          await this.backoff(attempt, appErr, req);
          continue;
        }
        throw appErr;
      }
      const status = response.status;
      this.log.debug({ method: req.method, path: req.path, status, attempt }, 'prism call');
      if (req.session !== false) this.storeCookies(response);

      if (status === 401 && req.session !== false && usedCookies && !reloggedIn) {
        // The session expired: log in again with Basic credentials once. Safe for any call, since a 401 means
        // the server did not act on it.
        this.cookies.clear();
        reloggedIn = true;
        attempt--;
        continue;
      }
      if (status >= 200 && status < 300) {
        return { status, data: this.parse(req, response), headers: flatHeaders(response) };
      }
      const appErr = this.statusError(req, response);
      if (appErr.retryable && attempt < attempts) {
        await this.backoff(attempt, appErr, req);
        continue;
      }
      throw appErr;
    }
  }

  /** Like request(), but a 404 (the entity is gone or never existed) yields undefined instead of an error. */
  async requestIfExists<S extends z.ZodType>(req: PrismRequest<S>): Promise<PrismResponse<z.infer<S>> | undefined> {
    try {
      return await this.request(req);
    } catch (err) {
      if (isAppError(err) && err.code === ErrorCode.NotFound) return undefined;
      throw err;
    }
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }

  private async send(req: PrismRequest<z.ZodType>, useCookies: boolean): Promise<AxiosResponse<string>> {
    await this.limiter?.acquire(req.signal);
    const headers: RawAxiosRequestHeaders = { ...req.headers };
    if (req.session !== false) {
      if (useCookies) headers.Cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
      else headers.Authorization = this.basicAuth;
    }
    if (req.body !== undefined) headers['Content-Type'] = 'application/json';
    const timeout = AbortSignal.timeout(this.requestTimeoutMs);
    const signal = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
    const params = req.query ? Object.fromEntries(Object.entries(req.query).filter(([, v]) => v !== undefined)) : undefined;
    return this.axios.request<string>({
      method: req.method,
      baseURL: req.baseUrl ?? this.endpoint,
      url: req.path,
      params,
      // OData keys start with '$' and values carry quotes and spaces: encode them like the v4 SDKs do.
      paramsSerializer: { serialize: (p: Record<string, string | number>) => new URLSearchParams(Object.entries(p).map(([k, v]): [string, string] => [k, String(v)])).toString().replaceAll('+', '%20') },
      data: req.body === undefined ? undefined : JSON.stringify(req.body),
      headers,
      signal,
    });
  }

  private storeCookies(response: AxiosResponse): void {
    const setCookie = response.headers['set-cookie'];
    if (!Array.isArray(setCookie)) return;
    for (const line of setCookie) {
      const pair = line.split(';', 1)[0] ?? '';
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      // Prism sends attribute-only lines like "Expires=...;Path=/" (see the recorded fixtures): not cookies.
      if (['expires', 'path', 'domain', 'max-age'].includes(name.toLowerCase())) continue;
      if (value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  private parse<S extends z.ZodType>(req: PrismRequest<S>, response: AxiosResponse<string>): z.infer<S> {
    const text = response.data;
    let json: unknown;
    try {
      json = text === '' || text === undefined ? undefined : JSON.parse(text);
    } catch {
      throw new AppError(ErrorCode.BadResponse, `${req.what}: Prism answered HTTP ${response.status} with a body that is not JSON`, {
        hint: 'check that --endpoint points at Prism (https://host:9440)',
      });
    }
    const parsed = req.schema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new AppError(
        ErrorCode.BadResponse,
        `${req.what}: unexpected response from ${req.method} ${req.path} (HTTP ${response.status}): ${issue ? `${issue.path.join('.') || '(body)'}: ${issue.message}` : 'invalid'}`,
        { hint: 'the Prism version may be unsupported; report it with the Prism version' },
      );
    }
    return parsed.data as z.infer<S>;
  }

  private statusError(req: PrismRequest<z.ZodType>, response: AxiosResponse<string>): AppError {
    const status = response.status;
    const detail = nutanixMessage(response.data);
    const where = `${req.method} ${req.baseUrl ?? this.endpoint}${req.path}`;
    const suffix = detail ? `: ${detail}` : '';
    switch (status) {
      case 401:
        return new AppError(ErrorCode.Unauthenticated, `Prism at ${req.baseUrl ?? this.endpoint} rejected the username or password (HTTP 401)`, {
          hint: 'check --username and --password-file (or NUTANIX_USERNAME / NUTANIX_PASSWORD)',
        });
      case 403:
        return new AppError(ErrorCode.Forbidden, `the Prism user may not ${req.what} (HTTP 403)${suffix}`, {
          hint: 'grant the user a role with this permission, e.g. Prism Admin or a backup-admin role',
        });
      case 404:
        return new AppError(ErrorCode.NotFound, `${req.what}: not found (HTTP 404 from ${where})${suffix}`);
      case 409:
      case 412:
        return new AppError(ErrorCode.Conflict, `${req.what}: conflict (HTTP ${status})${suffix}`, { retryable: true });
      case 429:
        return new AppError(ErrorCode.RateLimited, `${req.what}: Prism is rate-limiting requests (HTTP 429)${suffix}`, {
          retryable: true,
          retryAfterMs: retryAfterMs(response),
          hint: 'lower the number of concurrent backups or raise the Prism rate limit',
        });
      default:
        if (retryableStatus.has(status)) {
          return new AppError(ErrorCode.Unavailable, `${req.what}: Prism is unavailable (HTTP ${status})${suffix}`, {
            retryable: true,
            retryAfterMs: retryAfterMs(response),
          });
        }
        if (status >= 300 && status < 400) {
          return new AppError(ErrorCode.BadResponse, `${req.what}: Prism redirected (HTTP ${status}) to ${response.headers.location ?? '?'}`, {
            hint: 'use the Prism endpoint itself, https://host:9440',
          });
        }
        return new AppError(status >= 500 ? ErrorCode.Unavailable : ErrorCode.BadResponse, `${req.what}: HTTP ${status} from ${where}${suffix}`);
    }
  }

  private transportError(err: unknown, req: PrismRequest<z.ZodType>): AppError {
    if (isAppError(err)) return err;
    if (req.signal?.aborted) return abortError(req.signal, req.what);
    const code = errorCode(err);
    const target = req.baseUrl ?? this.endpoint;
    if (code === 'ERR_CANCELED' || code === 'ABORT_ERR') {
      // Not the caller's signal, so the per-attempt timeout fired.
      return new AppError(ErrorCode.Timeout, `${req.what}: no answer from ${target} within ${this.requestTimeoutMs} ms`, { retryable: true });
    }
    if (isUntrustedCertificateCode(code)) {
      return new AppError(ErrorCode.TlsUntrusted, `the TLS certificate of ${target} is not trusted (${code})`, {
        hint: 'pass the Prism CA bundle with --ca-file, or --insecure-skip-tls-verify for a lab',
      });
    }
    if (code && unreachableCodes.has(code)) {
      return new AppError(ErrorCode.Unreachable, `cannot reach Prism at ${target} (${code})`, {
        retryable: true,
        hint: 'check --endpoint (https://host:9440), DNS and firewalls',
      });
    }
    const message = err instanceof Error ? err.message : String(err);
    if (code && transientNetworkCodes.has(code) || /socket hang up|ECONNRESET/.test(message)) {
      return new AppError(ErrorCode.Unavailable, `${req.what}: connection to ${target} dropped (${code ?? message})`, { retryable: true });
    }
    if (/wrong version number|EPROTO|ssl/i.test(`${code} ${message}`)) {
      return new AppError(ErrorCode.Unreachable, `cannot talk TLS to ${target} (${code ?? message})`, {
        hint: 'check that --endpoint is the HTTPS Prism port, usually https://host:9440',
      });
    }
    return new AppError(ErrorCode.Unreachable, `${req.what}: request to ${target} failed (${code ?? message})`, { retryable: true });
  }

  private async backoff(attempt: number, err: AppError, req: PrismRequest<z.ZodType>): Promise<void> {
    const exp = Math.min(this.retry.maxDelayMs, this.retry.baseDelayMs * 2 ** (attempt - 1));
    // A server that asks for a long pause gets it from the caller's next reconcile, not from a blocked call.
    if ((err.retryAfterMs ?? 0) > this.retry.maxServerWaitMs) throw err;
    // Full jitter spreads concurrent clients; the server-given wait is a floor.
    const delay = Math.max(err.retryAfterMs ?? 0, Math.random() * exp);
    this.log.info({ what: req.what, code: err.code, attempt, delayMs: Math.round(delay) }, 'retrying prism call');
    try {
      await sleep(delay, undefined, req.signal ? { signal: req.signal } : undefined);
    } catch {
      throw abortError(req.signal, req.what);
    }
  }
}

function errorCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const direct = (err as { code?: unknown }).code;
  const cause = (err as { cause?: { code?: unknown } }).cause?.code;
  // axios wraps socket errors; the TLS verdict is on the cause.
  if (typeof cause === 'string' && (isUntrustedCertificateCode(cause) || unreachableCodes.has(cause) || transientNetworkCodes.has(cause))) return cause;
  return typeof direct === 'string' ? direct : typeof cause === 'string' ? cause : undefined;
}

function flatHeaders(response: AxiosResponse): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(response.headers)) {
    if (typeof v === 'string') out[k.toLowerCase()] = v;
    else if (typeof v === 'number') out[k.toLowerCase()] = String(v);
  }
  return out;
}

/** Retry-After (seconds or HTTP date) or X-Ratelimit-Reset (seconds until reset, or an epoch in seconds). */
export function retryAfterMs(response: { headers: Record<string, unknown> }, now = Date.now()): number | undefined {
  const header = (name: string): string | undefined => {
    const v = response.headers[name];
    return typeof v === 'string' ? v : typeof v === 'number' ? String(v) : undefined;
  };
  const retryAfter = header('retry-after');
  if (retryAfter !== undefined) {
    const seconds = Number(retryAfter);
    if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
    const date = Date.parse(retryAfter);
    if (Number.isFinite(date)) return Math.max(0, date - now);
  }
  const reset = Number(header('x-ratelimit-reset') ?? header('x-api-ratelimit-reset'));
  if (Number.isFinite(reset) && reset >= 0) return reset > 1e9 ? Math.max(0, reset * 1000 - now) : reset * 1000;
  return undefined;
}

/** The human message inside a v3 (`message_list`) or v4 (`data.error[]`) error body, if there is one. */
export function nutanixMessage(body: string | undefined): string | undefined {
  if (!body) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    return undefined;
  }
  const v3 = v3ErrorBodySchema.safeParse(json);
  if (v3.success && v3.data.message_list.length > 0) {
    return v3.data.message_list.map((m) => [m.reason, m.message].filter(Boolean).join(': ')).join('; ');
  }
  const v4 = v4ErrorBodySchema.safeParse(json);
  if (v4.success) {
    const errors = v4.data.data.error;
    if (Array.isArray(errors)) return errors.map((e) => [e.code, e.message].filter(Boolean).join(': ')).join('; ');
    return errors.validationErrorMessages?.map((m) => `${m.attributePath ?? ''} ${m.message ?? ''}`.trim()).join('; ') ?? errors.error ?? undefined;
  }
  return undefined;
}
