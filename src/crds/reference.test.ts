import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { referencePath, renderReference } from './reference.ts';

describe('CRD reference', () => {
  it('docs/crd-reference.md is generated from the current schemas (else run node src/crds/reference.ts)', async () => {
    expect(await readFile(referencePath, 'utf8')).toBe(renderReference());
  });
  it('lists nested spec fields with their defaults', () => {
    expect(renderReference()).toContain('| `spec.concurrency.maxVMs` | integer |');
  });
});
