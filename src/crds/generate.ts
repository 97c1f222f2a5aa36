/**
 * Writes the CRDs of backup.sendense.io, generated from the zod schemas in src/crds, into the Helm chart:
 *
 *   node src/crds/generate.ts            # (re)write helm/sendense-nutanix/crds/*.yaml
 *   node src/crds/generate.ts --check    # exit 1 when the committed files differ from the schemas
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { z } from 'zod';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { apiGroup, apiVersion, type CustomResourceKind } from './common.ts';
import { nutanixClusterKind } from './nutanix-cluster.ts';
import { vmBackupPolicyKind } from './vm-backup-policy.ts';
import { vmBackupRunKind } from './vm-backup-run.ts';

export const customResourceKinds: CustomResourceKind[] = [nutanixClusterKind, vmBackupPolicyKind, vmBackupRunKind];

export const defaultCrdDir = resolve(dirname(fileURLToPath(import.meta.url)), '../../helm/sendense-nutanix/crds');

type JsonSchema = { [key: string]: unknown };

function isJsonSchema(value: unknown): value is JsonSchema {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * zod's OpenAPI 3.0 output, checked and trimmed to a structural schema (the form apiextensions.k8s.io/v1 demands):
 * every node typed, no composition or references, no `additionalProperties: false`.
 */
export function toStructuralSchema(node: JsonSchema, path = ''): JsonSchema {
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(node)) {
    if (['$ref', '$defs', 'anyOf', 'oneOf', 'allOf', 'not', 'const'].includes(key) || (key === 'additionalProperties' && value === false)) {
      throw new AppError(ErrorCode.Internal, `CRD schema at ${path || '/'} uses "${key}", which a structural schema cannot express`, {
        hint: 'use plain objects, optional fields and enums in src/crds, and a CEL rule for anything more',
      });
    }
    if (key === '$schema') continue;
    // zod adds a full RFC 3339 regex next to format: date-time; the apiserver checks the format itself.
    if (key === 'pattern' && node.format === 'date-time') continue;
    // zod bounds every integer by Number.MAX_SAFE_INTEGER; int64 needs no such bound.
    if ((key === 'maximum' && value === Number.MAX_SAFE_INTEGER) || (key === 'minimum' && value === Number.MIN_SAFE_INTEGER)) continue;
    if (key === 'properties' && isJsonSchema(value)) {
      out.properties = Object.fromEntries(
        Object.entries(value).map(([name, child]) => [name, toStructuralSchema(child as JsonSchema, `${path}.${name}`)]),
      );
    } else if ((key === 'items' || key === 'additionalProperties') && isJsonSchema(value)) {
      out[key] = toStructuralSchema(value, `${path}[*]`);
    } else {
      out[key] = value;
    }
  }
  if (isJsonSchema(out.default) && isJsonSchema(out.properties)) out.default = withNestedDefaults(out.default, out.properties);
  if (out.type === undefined) {
    throw new AppError(ErrorCode.Internal, `CRD schema at ${path || '/'} has no type`, { hint: 'give every field in src/crds a concrete zod type' });
  }
  return out;
}

/**
 * An object default (zod's `.prefault({})`) with its fields' own defaults filled in: the apiserver checks defaults
 * against CEL rules as written, without defaulting inside them first.
 */
function withNestedDefaults(value: JsonSchema, properties: JsonSchema): JsonSchema {
  const out = { ...value };
  for (const [name, child] of Object.entries(properties)) {
    if (!isJsonSchema(child) || child.default === undefined) continue;
    const given = out[name] ?? child.default;
    out[name] = isJsonSchema(given) && isJsonSchema(child.properties) ? withNestedDefaults(given, child.properties) : given;
  }
  return out;
}

function openApiSchema(schema: z.ZodType, path: string): JsonSchema {
  // Input side: fields with defaults are optional for the user, and the apiserver fills the defaults in.
  return toStructuralSchema(z.toJSONSchema(schema, { target: 'openapi-3.0', io: 'input' }) as JsonSchema, path);
}

export function customResourceDefinition(kind: CustomResourceKind): JsonSchema {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${kind.plural}.${apiGroup}`, labels: { 'app.kubernetes.io/part-of': 'sendense-nutanix' } },
    spec: {
      group: apiGroup,
      names: {
        kind: kind.kind,
        listKind: `${kind.kind}List`,
        plural: kind.plural,
        singular: kind.singular,
        shortNames: kind.shortNames,
        categories: ['sendense'],
      },
      scope: 'Namespaced',
      versions: [
        {
          name: apiVersion,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: kind.printerColumns,
          schema: {
            openAPIV3Schema: {
              type: 'object',
              description: kind.description,
              required: ['spec'],
              properties: {
                apiVersion: { type: 'string' },
                kind: { type: 'string' },
                metadata: { type: 'object' },
                spec: openApiSchema(kind.spec, '.spec'),
                status: openApiSchema(kind.status, '.status'),
              },
            },
          },
        },
      ],
    },
  };
}

/** File name → YAML text of every CRD. */
export function renderCrds(): Map<string, string> {
  const header = '# Generated by src/crds/generate.ts from the zod schemas in src/crds. Do not edit: change the schemas and rerun it.\n';
  return new Map(
    customResourceKinds.map((kind) => [`${kind.plural}.${apiGroup}.yaml`, header + stringify(customResourceDefinition(kind), { lineWidth: 0 })]),
  );
}

/** Writes the CRDs, or with `check` only compares; returns the names of files that were (or would be) changed. */
export async function writeCrds(dir: string, options: { check: boolean }): Promise<string[]> {
  const changed: string[] = [];
  if (!options.check) await mkdir(dir, { recursive: true });
  for (const [name, text] of renderCrds()) {
    const path = join(dir, name);
    const current = await readFile(path, 'utf8').catch(() => undefined);
    if (current === text) continue;
    changed.push(path);
    if (!options.check) await writeFile(path, text);
  }
  return changed;
}

const cliFlags = z.object({ check: z.boolean().default(false), out: z.string().min(1).default(defaultCrdDir) });

async function main(): Promise<void> {
  const flags = cliFlags.parse(parseArgs({ options: { check: { type: 'boolean' }, out: { type: 'string' } } }).values);
  const changed = await writeCrds(flags.out, { check: flags.check });
  if (flags.check && changed.length > 0) {
    console.error(`CRDs are stale: ${changed.join(', ')}\nrun: node src/crds/generate.ts`);
    process.exitCode = 1;
    return;
  }
  console.log(changed.length === 0 ? `CRDs in ${flags.out} are up to date` : `wrote ${changed.join(', ')}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
