import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { RequestRateLimiter } from './rate-limit.ts';

describe('RequestRateLimiter', () => {
  beforeEach(() => vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] }));
  afterEach(() => vi.useRealTimers());

  it('lets a burst of one second through, then one request per interval, in order', async () => {
    const limiter = new RequestRateLimiter(5);
    const granted: number[] = [];
    const all = Array.from({ length: 7 }, (_, i) => limiter.acquire().then(() => granted.push(i)));
    await vi.advanceTimersByTimeAsync(0);
    expect(granted).toEqual([0, 1, 2, 3, 4]);
    await vi.advanceTimersByTimeAsync(199);
    expect(granted).toHaveLength(5);
    await vi.advanceTimersByTimeAsync(1);
    expect(granted).toEqual([0, 1, 2, 3, 4, 5]);
    await vi.advanceTimersByTimeAsync(200);
    await Promise.all(all);
    expect(granted).toEqual([0, 1, 2, 3, 4, 5, 6]);
  });

  it('gives up waiting when the caller aborts', async () => {
    const limiter = new RequestRateLimiter(1);
    await limiter.acquire();
    const controller = new AbortController();
    const waiting = limiter.acquire(controller.signal);
    controller.abort(new Error('stop'));
    await expect(waiting).rejects.toMatchObject({ code: 'ABORTED' });
  });
});
