/** Every environment variable the chart gives the operator is one the product code reads: no silently ignored value. */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import { installYamlPath, repoRoot } from './manifests.ts';

const deployment = z.object({
  kind: z.literal('Deployment'),
  spec: z.object({ template: z.object({ spec: z.object({ containers: z.array(z.object({ env: z.array(z.object({ name: z.string() })).default([]) })) }) }) }),
});

async function productSources(dir: string): Promise<string> {
  const texts: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts')) texts.push(await readFile(join(entry.parentPath, entry.name), 'utf8'));
  }
  return texts.join('\n');
}

describe('operator environment', () => {
  it('the Deployment in manifests/install.yaml sets only variables src/ reads', async () => {
    const documents = (await readFile(installYamlPath, 'utf8')).split(/^---$/m).map((d) => parse(d) as unknown);
    const operator = documents.map((d) => deployment.safeParse(d)).find((r) => r.success)?.data;
    const names = operator?.spec.template.spec.containers.flatMap((c) => c.env.map((e) => e.name)) ?? [];
    expect(names.length).toBeGreaterThan(5);
    const sources = await productSources(join(repoRoot, 'src'));
    expect(names.filter((name) => !sources.includes(name))).toEqual([]);
  });
});
