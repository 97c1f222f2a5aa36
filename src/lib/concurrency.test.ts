import { describe, expect, it } from 'vitest';
import { mapBounded } from './concurrency.ts';

describe('mapBounded', () => {
  it('keeps order and never exceeds the limit', async () => {
    let running = 0;
    let peak = 0;
    const out = await mapBounded([5, 1, 4, 2, 3], 2, async (n) => {
      running++;
      peak = Math.max(peak, running);
      await new Promise((r) => setTimeout(r, n));
      running--;
      return n * 10;
    });
    expect(out).toEqual([50, 10, 40, 20, 30]);
    expect(peak).toBe(2);
  });
  it('stops starting work after a failure and settles only when running work has', async () => {
    const started: number[] = [];
    let slowFinished = false;
    const run = mapBounded([1, 2, 3, 4], 2, async (n) => {
      started.push(n);
      if (n === 1) {
        await new Promise((r) => setTimeout(r, 30));
        slowFinished = true;
        return n;
      }
      throw new Error(`boom ${n}`);
    });
    await expect(run).rejects.toThrow('boom 2');
    expect(slowFinished).toBe(true);
    expect(started).toEqual([1, 2]);
  });
});
