/**
 * The CRD field reference (docs/crd-reference.md), generated from the same schemas as the CRDs, so the
 * documentation cannot drift from the API. `node src/crds/reference.ts [--check]`.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { apiGroup, apiVersion } from './common.ts';
import { customResourceDefinition, customResourceKinds } from './generate.ts';

export const referencePath = resolve(dirname(fileURLToPath(import.meta.url)), '../../docs/crd-reference.md');

interface SchemaNode {
  type?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  required?: string[];
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
  minimum?: number;
  maximum?: number;
}
const schemaNode: z.ZodType<SchemaNode> = z.lazy(() =>
  z.looseObject({
    type: z.string().optional(),
    description: z.string().optional(),
    default: z.unknown().optional(),
    enum: z.array(z.unknown()).optional(),
    required: z.array(z.string()).optional(),
    properties: z.record(z.string(), schemaNode).optional(),
    items: schemaNode.optional(),
    minimum: z.number().optional(),
    maximum: z.number().optional(),
  }),
);
const crdSchema = z.object({
  spec: z.object({ versions: z.array(z.object({ schema: z.object({ openAPIV3Schema: schemaNode }) })) }),
});

function typeOf(node: SchemaNode): string {
  if (node.type === 'array') return `${node.items ? typeOf(node.items) : 'any'}[]`;
  if (node.enum) return node.enum.map((v) => `\`${String(v)}\``).join(' \\| ');
  return node.type ?? 'any';
}

function notes(node: SchemaNode, required: boolean): string {
  const parts = [node.description?.replace(/\s+/g, ' ').replaceAll('|', '\\|') ?? ''];
  if (required) parts.push('Required.');
  if (node.default !== undefined && typeof node.default !== 'object') parts.push(`Default \`${JSON.stringify(node.default)}\`.`);
  if (node.minimum !== undefined || node.maximum !== undefined) parts.push(`Range ${node.minimum ?? '…'}–${node.maximum ?? '…'}.`);
  return parts.filter(Boolean).join(' ');
}

function rows(node: SchemaNode, path: string, out: string[]): void {
  const required = new Set(node.required ?? []);
  for (const [name, child] of Object.entries(node.properties ?? {})) {
    const field = `${path}.${name}`;
    out.push(`| \`${field}\` | ${typeOf(child)} | ${notes(child, required.has(name))} |`);
    const nested = child.type === 'array' ? child.items : child;
    if (nested?.properties && name !== 'conditions') rows(nested, child.type === 'array' ? `${field}[]` : field, out);
  }
}

export function renderReference(): string {
  const lines = [
    `# CRD reference (${apiGroup}/${apiVersion})`,
    '',
    'Generated from the zod schemas in `src/crds/` by `node src/crds/reference.ts`; do not edit by hand.',
    'Conditions are `metav1.Condition`s (type, status, reason, message, lastTransitionTime, observedGeneration).',
  ];
  for (const kind of customResourceKinds) {
    const root = crdSchema.parse(customResourceDefinition(kind)).spec.versions[0]?.schema.openAPIV3Schema;
    lines.push('', `## ${kind.kind} (\`${kind.shortNames.join('`, `')}\`)`, '', kind.description, '');
    for (const part of ['spec', 'status'] as const) {
      const node = root?.properties?.[part];
      if (!node) continue;
      lines.push('| field | type | meaning |', '| --- | --- | --- |');
      rows(node, part, lines);
      lines.push('');
    }
  }
  return `${lines.join('\n').trimEnd()}\n`;
}

async function main(): Promise<void> {
  const text = renderReference();
  if (process.argv.includes('--check')) {
    const current = await readFile(referencePath, 'utf8').catch(() => '');
    if (current !== text) {
      console.error(`${referencePath} is stale: run node src/crds/reference.ts`);
      process.exitCode = 1;
    }
    return;
  }
  await writeFile(referencePath, text);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
