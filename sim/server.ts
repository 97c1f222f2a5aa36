/**
 * The simulator's HTTPS front: routing, authentication (Basic, session cookie, discover-cluster JWT), the
 * read-only `viewer` role, fault injection, request counters and the response headers a real Prism sends.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { FaultSet } from './faults.ts';
import type { Tgtd } from './iscsi.ts';
import { pcVersion } from './state.ts';
import { TaskEngine, type TaskDurations } from './tasks.ts';
import type { World } from './world.ts';

export const ApiMode = { V3: 'v3', V4: 'v4' } as const;
export type ApiMode = (typeof ApiMode)[keyof typeof ApiMode];

export interface SimConfig {
  dataDir: string;
  api: ApiMode;
  listenIp: string;
  port: number;
  sessionTtlMs: number;
  taskDurations: TaskDurations;
  crtPageRegions: number;
  iscsiAcl: 'initiator' | 'any';
  password: string;
  adminToken: string;
}

export const adminUser = 'admin';
export const viewerUser = 'viewer';
export type User = typeof adminUser | typeof viewerUser;

/** read: any user; write/protected: admin only (viewer gets 403); admin: the /_sim API's bearer token. */
export type Access = 'read' | 'write' | 'protected' | 'admin';

export interface Ctx {
  method: string;
  path: string;
  route: string;
  params: Record<string, string>;
  query: URLSearchParams;
  body: unknown;
  headers: IncomingMessage['headers'];
  user: User;
  signal: AbortSignal;
}

export interface Reply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

export interface Route {
  method: string;
  template: string;
  access: Access;
  handler: (ctx: Ctx) => Promise<Reply> | Reply;
}

interface CompiledRoute extends Route {
  regex: RegExp;
  names: string[];
}

function compile(route: Route): CompiledRoute {
  const names: string[] = [];
  const source = route.template
    .split(/(\{[A-Za-z]+\})/)
    .map((part) => {
      const name = /^\{([A-Za-z]+)\}$/.exec(part)?.[1];
      if (name) {
        names.push(name);
        return '([^/]+)';
      }
      return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    })
    .join('');
  return { ...route, regex: new RegExp(`^${source}$`), names };
}

// ---- error bodies -------------------------------------------------------------------------------------------

export function v3Error(status: number, reason: string, message: string, kind?: string): Reply {
  return {
    status,
    body: { api_version: '3.1', code: status, ...(kind ? { kind } : {}), message_list: [{ message, reason }], state: 'ERROR' },
  };
}

/** v4 ErrorResponse as recorded (vmm 404): `$dataItemDiscriminator` + data.error[AppMessage]. */
export function v4Error(ns: string, status: number, code: string, errorGroup: string, message: string, argumentsMap: Record<string, string> = {}): Reply {
  return {
    status,
    body: {
      $dataItemDiscriminator: `${ns}.v4.error.ErrorResponse`,
      data: {
        $errorItemDiscriminator: `List<${ns}.v4.error.AppMessage>`,
        $objectType: `${ns}.v4.error.ErrorResponse`,
        error: [
          { $objectType: `${ns}.v4.error.AppMessage`, argumentsMap, code, errorGroup, locale: 'en-US', message, severity: 'ERROR' },
        ],
      },
    },
  };
}

/** The recorded 401 body of Prism's intent gateway. */
const unauthenticatedBody = {
  state: 'ERROR',
  code: 401,
  message_list: [
    { reason: 'AUTHENTICATION_REQUIRED', message: 'Authentication required.', details: 'Basic realm="Intent Gateway Login Required"' },
  ],
  api_version: '3.1',
};

/** v4 namespace of a path (`/api/vmm/v4.0/...` → `vmm`), undefined for v3 and admin paths. */
export function v4Namespace(path: string): string | undefined {
  return /^\/api\/([a-z]+)\/v4[^/]*\//.exec(path)?.[1];
}

function errorFor(path: string, status: number, reason: string, v4Code: string, message: string): Reply {
  const ns = v4Namespace(path);
  return ns ? v4Error(ns, status, v4Code, reason, message) : v3Error(status, reason, message);
}

// ---- the simulator ----------------------------------------------------------------------------------------

interface Session {
  user: User;
  expiresAt: number;
}

export class Sim {
  readonly config: SimConfig;
  readonly world: World;
  readonly faults = new FaultSet();
  readonly tasks: TaskEngine;
  readonly counters = new Map<string, number>();
  tgtd: Tgtd | undefined;
  private readonly routes: CompiledRoute[] = [];
  private readonly sessions = new Map<string, Session>();
  /** Sessions and JWTs issued before this instant are invalid (admin "expire sessions now"). */
  private invalidBefore = 0;
  private readonly jwtSecret = randomBytes(32);
  private server: Server | undefined;
  private readonly inflight = new Set<AbortController>();

  constructor(config: SimConfig, world: World) {
    this.config = config;
    this.world = world;
    this.tasks = new TaskEngine(world.state, this.faults, config.taskDurations, () => world.changed());
  }

  addRoutes(routes: Route[]): void {
    for (const route of routes) this.routes.push(compile(route));
  }

  sessionCount(): number {
    const now = Date.now();
    return [...this.sessions.values()].filter((s) => s.expiresAt > now).length;
  }

  expireSessions(): void {
    this.sessions.clear();
    this.invalidBefore = Date.now() + 1;
  }

  // ---- auth -----------------------------------------------------------------------------------------------

  private passwordMatches(given: string): boolean {
    const a = Buffer.from(given);
    const b = Buffer.from(this.config.password);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  /** A JWT (HS256) of the kind discover-cluster returns; accepted as the NTNX_IGW_SESSION cookie. */
  issueJwt(user: User): string {
    const encode = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
    const iat = Date.now();
    const body = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode({ sub: user, iat: Math.floor(iat / 1000), iatMs: iat, exp: Math.floor((iat + this.config.sessionTtlMs) / 1000), expMs: iat + this.config.sessionTtlMs, aud: 'prism-element' })}`;
    return `${body}.${createHmac('sha256', this.jwtSecret).update(body).digest('base64url')}`;
  }

  private verifyJwt(token: string): User | undefined {
    const [header, payload, signature] = token.split('.');
    if (!header || !payload || !signature) return undefined;
    const expected = createHmac('sha256', this.jwtSecret).update(`${header}.${payload}`).digest('base64url');
    if (expected !== signature) return undefined;
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as { sub?: string; iatMs?: number; expMs?: number };
    if ((claims.expMs ?? 0) <= Date.now() || (claims.iatMs ?? 0) < this.invalidBefore) return undefined;
    return claims.sub === adminUser || claims.sub === viewerUser ? claims.sub : undefined;
  }

  /** The user, plus a Set-Cookie for a new session on a Basic login; 'bad' = wrong credentials or expired cookie. */
  private authenticate(req: IncomingMessage): { user: User; setCookie?: string } | 'bad' {
    const auth = req.headers.authorization;
    if (auth?.startsWith('Basic ')) {
      const decoded = Buffer.from(auth.slice(6), 'base64').toString();
      const colon = decoded.indexOf(':');
      const name = decoded.slice(0, colon);
      if (colon < 0 || (name !== adminUser && name !== viewerUser) || !this.passwordMatches(decoded.slice(colon + 1))) return 'bad';
      const token = randomBytes(24).toString('base64url');
      // Clients that always send Basic open a session per request: forget the expired ones now and then.
      if (this.sessions.size >= 1000) {
        const now = Date.now();
        for (const [key, s] of this.sessions) if (s.expiresAt <= now) this.sessions.delete(key);
      }
      const expiresAt = Date.now() + this.config.sessionTtlMs;
      this.sessions.set(token, { user: name, expiresAt });
      return {
        user: name,
        setCookie: `NTNX_IGW_SESSION=${token}; Expires=${new Date(expiresAt).toUTCString()}; Path=/; Secure; HttpOnly; SameSite=Lax`,
      };
    }
    const cookie = /(?:^|;\s*)NTNX_IGW_SESSION=([^;]+)/.exec(req.headers.cookie ?? '')?.[1];
    if (!cookie) return 'bad';
    const session = this.sessions.get(cookie);
    if (session) {
      if (session.expiresAt > Date.now()) return { user: session.user };
      this.sessions.delete(cookie);
      return 'bad';
    }
    const jwtUser = this.verifyJwt(cookie);
    return jwtUser ? { user: jwtUser } : 'bad';
  }

  // ---- request handling -------------------------------------------------------------------------------------

  private baseHeaders(): Record<string, string> {
    return {
      'Content-Type': 'application/json',
      Server: 'envoy',
      'X-Ntnx-Env': 'pc',
      'X-Ntnx-Product': pcVersion[this.config.api],
      'X-Ratelimit-Limit': '40',
      'X-Ratelimit-Remaining': '39',
      'X-Ratelimit-Reset': '0',
    };
  }

  private send(res: ServerResponse, reply: Reply, extra: Record<string, string> = {}): void {
    const headers = { ...this.baseHeaders(), ...extra, ...reply.headers };
    const payload = reply.body === undefined ? '' : JSON.stringify(reply.body);
    res.writeHead(reply.status, headers);
    res.end(payload);
  }

  private count(key: string): void {
    this.counters.set(key, (this.counters.get(key) ?? 0) + 1);
  }

  private async readBody(req: IncomingMessage): Promise<unknown> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > 16 * 1024 * 1024) throw new Error('request body larger than 16 MiB');
      chunks.push(chunk as Buffer);
    }
    const text = Buffer.concat(chunks).toString('utf8').trim();
    return text === '' ? undefined : JSON.parse(text);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'https://sim');
    const method = (req.method ?? 'GET').toUpperCase();
    const path = url.pathname;
    const isAdmin = path.startsWith('/_sim/');
    let matched: { route: CompiledRoute; params: Record<string, string> } | undefined;
    for (const route of this.routes) {
      if (route.method !== method) continue;
      const m = route.regex.exec(path);
      if (m) {
        matched = { route, params: Object.fromEntries(route.names.map((n, i) => [n, decodeURIComponent(m[i + 1] ?? '')])) };
        break;
      }
    }
    if (!isAdmin) {
      this.count(matched ? `${method} ${matched.route.template}` : `${method} ${path}`);
      const latency = this.faults.latencyMs(method, path);
      if (latency > 0) await sleep(latency);
      const fault = this.faults.httpFault(method, path);
      if (fault?.kind === 'drop') {
        req.socket.destroy();
        return;
      }
      if (fault?.kind === 'rateLimit') {
        const reply = errorFor(path, 429, 'TOO_MANY_REQUESTS', 'PRISM-50429', 'Too many requests, retry later.');
        this.send(res, reply, {
          'X-Ratelimit-Limit': '40',
          'X-Ratelimit-Remaining': '0',
          'X-Ratelimit-Reset': String(fault.retryAfterSeconds),
          'Retry-After': String(fault.retryAfterSeconds),
        });
        return;
      }
      if (fault?.kind === 'unavailable') {
        this.send(res, errorFor(path, 503, 'SERVICE_UNAVAILABLE', 'PRISM-50503', 'Service unavailable. The system cannot currently handle the request.'));
        return;
      }
    }
    let user: User = adminUser;
    let setCookie: string | undefined;
    if (isAdmin) {
      if (req.headers.authorization !== `Bearer ${this.config.adminToken}`) {
        this.send(res, { status: 401, body: { error: 'admin token required: Authorization: Bearer <adminToken from sim.json>' } });
        return;
      }
    } else {
      const auth = this.authenticate(req);
      if (auth === 'bad') {
        this.send(res, { status: 401, body: unauthenticatedBody }, { 'WWW-Authenticate': 'Basic realm="Intent Gateway Login Required"' });
        return;
      }
      user = auth.user;
      setCookie = auth.setCookie;
    }
    const extra: Record<string, string> = setCookie ? { 'Set-Cookie': setCookie } : {};
    if (!matched) {
      const reply = path.startsWith('/api/nutanix/v3/')
        ? v3Error(404, 'ENTITY_NOT_FOUND', `Path ${path} was not found.`)
        : isAdmin
          ? { status: 404, body: { error: `no admin route ${method} ${path}` } }
          : { status: 404, body: { message: 'The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.' } };
      this.send(res, reply, extra);
      return;
    }
    if (user === viewerUser && (matched.route.access === 'write' || matched.route.access === 'protected')) {
      const message = `No permission to access the resource. <Request '${path}' [${method}]>`;
      this.send(res, errorFor(path, 403, 'ACCESS_DENIED', 'PRISM-50403', message), extra);
      return;
    }
    const controller = new AbortController();
    this.inflight.add(controller);
    res.once('close', () => controller.abort());
    try {
      let body: unknown;
      try {
        body = await this.readBody(req);
      } catch (err) {
        this.send(res, errorFor(path, 400, 'INVALID_REQUEST', 'PRISM-50400', `Request body is not valid JSON: ${(err as Error).message}`), extra);
        return;
      }
      const ctx: Ctx = { method, path, route: matched.route.template, params: matched.params, query: url.searchParams, body, headers: req.headers, user, signal: controller.signal };
      const reply = await matched.route.handler(ctx);
      if (!res.destroyed) this.send(res, reply, extra);
    } finally {
      this.inflight.delete(controller);
    }
  }

  listen(tls: { key: string; cert: string }): Promise<AddressInfo> {
    const server = createServer({ key: tls.key, cert: tls.cert }, (req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        if (res.headersSent || res.destroyed) return;
        this.send(res, { status: 500, body: { state: 'ERROR', code: 500, message_list: [{ reason: 'INTERNAL_ERROR', message: String((err as Error).message ?? err) }], api_version: '3.1' } });
      });
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.config.port, this.config.listenIp, () => resolve(server.address() as AddressInfo));
    });
  }

  async close(): Promise<void> {
    for (const controller of this.inflight) controller.abort();
    this.tasks.cancelAll();
    const server = this.server;
    if (server) {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    }
  }
}
