/** The recorded real Prism Central exchanges in ../shared/fixtures (keploy YAML, one or more documents a file). */
import { readFileSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { z } from 'zod';

export const fixtureDir = join(import.meta.dirname, '../../../shared/fixtures/prism-pc-recorded');

const keployDoc = z.object({
  spec: z.object({
    req: z.object({ method: z.string(), url: z.string(), body: z.string().nullish() }),
    resp: z.object({ status_code: z.number(), body: z.string().nullish(), header: z.record(z.string(), z.string()).nullish() }),
  }),
});

export interface RecordedExchange {
  file: string;
  method: string;
  /** Path and query of the recorded URL. */
  path: string;
  requestBody: unknown;
  status: number;
  responseBody: unknown;
  responseHeaders: Record<string, string>;
}

function json(text: string | null | undefined): unknown {
  return text && text.trim() !== '' ? JSON.parse(text) : undefined;
}

export function loadFixtures(): RecordedExchange[] {
  const out: RecordedExchange[] = [];
  for (const file of readdirSync(fixtureDir).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const doc of parseAllDocuments(readFileSync(join(fixtureDir, file), 'utf8'))) {
      const { req, resp } = keployDoc.parse(doc.toJS()).spec;
      const url = new URL(req.url);
      out.push({
        file: basename(file, '.yaml'),
        method: req.method,
        path: url.pathname + url.search,
        requestBody: json(req.body),
        status: resp.status_code,
        responseBody: json(resp.body),
        responseHeaders: resp.header ?? {},
      });
    }
  }
  return out;
}
