import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defaultCrdDir, toStructuralSchema, writeCrds } from './generate.ts';

describe('CRD generator', () => {
  it('has written the committed CRDs from the current schemas (else run node src/crds/generate.ts)', async () => {
    expect(await writeCrds(defaultCrdDir, { check: true })).toEqual([]);
  });

  it('refuses what a structural schema cannot express, naming the field', () => {
    const union = z.toJSONSchema(z.object({ target: z.object({ repo: z.union([z.string(), z.number()]) }) }), { target: 'openapi-3.0' });
    expect(() => toStructuralSchema(union as Record<string, unknown>)).toThrow('.target.repo');
    const strict = z.toJSONSchema(z.strictObject({ a: z.string() }), { target: 'openapi-3.0' });
    expect(() => toStructuralSchema(strict as Record<string, unknown>)).toThrow('additionalProperties');
  });

  it('spells out nested defaults inside an object default, since CEL rules see the default as written', () => {
    const limits = z
      .object({ a: z.number().default(1), b: z.object({ c: z.string().default('x') }).prefault({}) })
      .prefault({});
    const schema = toStructuralSchema(z.toJSONSchema(z.object({ limits }), { target: 'openapi-3.0', io: 'input' }) as Record<string, unknown>);
    const written = z.object({ properties: z.object({ limits: z.object({ default: z.unknown() }) }) }).parse(schema);
    expect(written.properties.limits.default).toEqual({ a: 1, b: { c: 'x' } });
  });
});
