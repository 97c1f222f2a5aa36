/** Client side of the simulator's admin API: what `sim write`/`sim disk-path` and test/support/sim.ts use. */
import { request } from 'node:https';
import { z } from 'zod';

/** DIR/sim.json, written when the simulator is ready. */
export const simInfoSchema = z.object({
  endpoint: z.string(),
  username: z.string(),
  password: z.string(),
  caFile: z.string(),
  adminToken: z.string(),
  viewerUsername: z.string(),
  dataServicesIp: z.string().optional(),
  api: z.enum(['v3', 'v4']),
  pid: z.number().int(),
});
export type SimInfo = z.infer<typeof simInfoSchema>;

/** One admin call (Bearer adminToken, trusting only the simulator's CA); rejects on a non-2xx answer. */
export function adminCall(target: { endpoint: string; adminToken: string; caPem: string }, method: string, path: string, body?: unknown): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = request(
      new URL(path, target.endpoint),
      {
        method,
        ca: target.caPem,
        headers: { Authorization: `Bearer ${target.adminToken}`, 'Content-Type': 'application/json' },
        signal: AbortSignal.timeout(120_000),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          if ((res.statusCode ?? 500) >= 300) reject(new Error(`sim admin ${method} ${path}: HTTP ${res.statusCode} ${text}`));
          else resolve(text === '' ? undefined : (JSON.parse(text) as unknown));
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}
