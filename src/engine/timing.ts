/** Phase timings of a backup: how long each step took, so users and benchmarks see where the time goes. */
import { performance } from 'node:perf_hooks';

/** Runs `work` and returns its value with its duration in milliseconds (0.1 ms resolution). */
export async function timed<T>(work: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const start = performance.now();
  const value = await work();
  return { value, ms: msSince(start) };
}

/** Milliseconds since a `performance.now()` reading, rounded to 0.1 ms. */
export function msSince(start: number): number {
  return Math.round((performance.now() - start) * 10) / 10;
}
