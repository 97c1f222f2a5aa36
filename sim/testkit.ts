/**
 * Helpers for the simulator's own tests: a raw HTTPS client that trusts the sim's CA (so tests see exact
 * statuses, headers and bodies), and swagger-based validation of v3 responses.
 */
import { request } from 'node:https';
import type { IncomingHttpHeaders } from 'node:http';
import SwaggerParser from '@apidevtools/swagger-parser';
import { Ajv, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';
import type { RunningSim } from '../test/support/sim.ts';

export interface HttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  /** Parsed JSON body (undefined when empty). */
  body: unknown;
}

export interface CallOptions {
  body?: unknown;
  headers?: Record<string, string>;
  /** Default: Basic with the admin user. `false` sends no Authorization header. */
  auth?: { username: string; password: string } | false;
  cookie?: string;
}

export function call(sim: Pick<RunningSim, 'endpoint' | 'caPem' | 'username' | 'password'>, method: string, path: string, options: CallOptions = {}): Promise<HttpResult> {
  const headers: Record<string, string> = { Accept: 'application/json', ...options.headers };
  const auth = options.auth === undefined ? { username: sim.username, password: sim.password } : options.auth;
  if (auth) headers.Authorization = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;
  if (options.cookie) headers.Cookie = options.cookie;
  const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
  if (payload !== undefined) headers['Content-Type'] = 'application/json';
  return new Promise((resolve, reject) => {
    const req = request(new URL(path, sim.endpoint), { method, headers, ca: sim.caPem, agent: false, signal: AbortSignal.timeout(60_000) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body: text === '' ? undefined : (JSON.parse(text) as unknown) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** Polls a v4 task until it is terminal; returns its `data`. */
export async function waitV4Task(sim: RunningSim, extId: string): Promise<Record<string, unknown>> {
  for (let i = 0; i < 600; i++) {
    const res = await call(sim, 'GET', `/api/prism/v4.0/config/tasks/${extId}`);
    const data = (res.body as { data: Record<string, unknown> }).data;
    if (['SUCCEEDED', 'FAILED', 'CANCELED'].includes(String(data.status))) return data;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`task ${extId} did not finish`);
}

// ---- swagger conformance ------------------------------------------------------------------------------------

const specDir = new URL('../../shared/specs/prism-v3/', import.meta.url);

type Json = Record<string, unknown>;

/** Swagger 2.0 → JSON-schema quirks: `x-nullable: true` admits null. */
function adaptSwagger(node: unknown): void {
  if (Array.isArray(node)) {
    for (const item of node) adaptSwagger(item);
    return;
  }
  if (node === null || typeof node !== 'object') return;
  const obj = node as Json;
  if (obj['x-nullable'] === true && typeof obj.type === 'string') obj.type = [obj.type, 'null'];
  for (const value of Object.values(obj)) adaptSwagger(value);
}

export interface SwaggerValidator {
  /** Errors of `body` against the response schema of `method path` for `status` (or `default`); [] = valid. */
  validate(method: string, pathTemplate: string, status: number, body: unknown): string[];
}

async function loadSpec(file: string, id: string, ajv: Ajv): Promise<Json> {
  const api = (await SwaggerParser.parse(new URL(file, specDir).pathname)) as unknown as Json;
  adaptSwagger(api.definitions);
  ajv.addSchema({ $id: id, definitions: api.definitions }, id);
  return api;
}

/** Validators for the Prism Central v3 and Prism Element v3 swagger files in ../shared/specs. */
export async function loadSwaggerValidators(): Promise<{ pc: SwaggerValidator; pe: SwaggerValidator }> {
  const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: true });
  const addFormats = addFormatsModule as unknown as (a: Ajv) => Ajv;
  addFormats(ajv);
  ajv.addFormat('UUID', /^[0-9a-fA-F-]{36}$/);
  for (const loose of ['int32', 'int64', 'float', 'double', 'byte', 'binary', 'password']) ajv.addFormat(loose, true);
  const make = (api: Json, id: string): SwaggerValidator => {
    const cache = new Map<string, ValidateFunction>();
    return {
      validate(method, pathTemplate, status, body) {
        const path = (api.paths as Record<string, Record<string, { responses: Record<string, { schema?: Json }> }>>)[pathTemplate];
        const op = path?.[method.toLowerCase()];
        if (!op) return [`spec has no operation ${method} ${pathTemplate}`];
        const response = op.responses[String(status)] ?? op.responses.default;
        if (!response) return [`spec declares no response ${status} (nor default) for ${method} ${pathTemplate}`];
        // No schema = the spec leaves the body unspecified (e.g. PE DELETE 202, which really carries the task).
        if (!response.schema) return [];
        const ref = String(response.schema.$ref ?? '');
        const key = `${method} ${pathTemplate} ${status}`;
        let validate = cache.get(key);
        if (!validate) {
          validate = ajv.compile(ref.startsWith('#/') ? { $ref: `${id}${ref}` } : response.schema);
          cache.set(key, validate);
        }
        return validate(body) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath || '<root>'} ${e.message ?? ''} ${JSON.stringify(e.params)}`);
      },
    };
  };
  const pc = await loadSpec('prism-central-v3.json', 'pc', ajv);
  const pe = await loadSpec('prism-element-v3-pe5.6.yaml', 'pe', ajv);
  return { pc: make(pc, 'pc'), pe: make(pe, 'pe') };
}
