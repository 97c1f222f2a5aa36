import { describe, expect, it } from 'vitest';
import { WorkQueue } from './workqueue.ts';

describe('WorkQueue', () => {
  it('hands out a key once however often it was added', async () => {
    const queue = new WorkQueue();
    queue.add('ns/a');
    queue.add('ns/b');
    queue.add('ns/a');
    expect(queue.depth).toBe(2);
    expect(await queue.get()).toBe('ns/a');
    expect(await queue.get()).toBe('ns/b');
    expect(queue.depth).toBe(0);
  });

  it('never gives a key being processed to a second worker, and re-queues it after done', async () => {
    const queue = new WorkQueue();
    queue.add('ns/a');
    const first = await queue.get();
    queue.add('ns/a'); // changed while a worker holds it
    queue.add('ns/b');
    expect(await queue.get()).toBe('ns/b'); // not ns/a: it is still being processed
    let second: string | undefined;
    void queue.get().then((k) => (second = k));
    await Promise.resolve();
    expect(second).toBeUndefined();
    queue.done(first as string);
    await new Promise((r) => setImmediate(r));
    expect(second).toBe('ns/a');
  });

  it('backs off exponentially per key, capped, and forget resets it', () => {
    const queue = new WorkQueue({ baseDelayMs: 100, maxDelayMs: 500 });
    const delays = [1, 2, 3, 4, 5].map(() => queue.addRateLimited('ns/a'));
    expect(delays).toEqual([100, 200, 400, 500, 500]);
    expect(queue.addRateLimited('ns/b')).toBe(100); // other keys are independent
    expect(queue.addRateLimited('ns/c', 5000)).toBe(5000); // a server-given wait is a floor
    queue.forget('ns/a');
    expect(queue.failuresOf('ns/a')).toBe(0);
    expect(queue.addRateLimited('ns/a')).toBe(100);
    queue.shutDown();
  });

  it('delivers delayed adds, the earliest pending one winning', async () => {
    const queue = new WorkQueue();
    queue.addAfter('ns/a', 10_000);
    queue.addAfter('ns/a', 20);
    expect(queue.depth).toBe(0);
    expect(await queue.get()).toBe('ns/a');
    queue.shutDown();
  });

  it('releases waiting workers on shut down', async () => {
    const queue = new WorkQueue();
    const waiting = queue.get();
    queue.shutDown();
    expect(await waiting).toBeUndefined();
    queue.add('ns/a');
    expect(await queue.get()).toBeUndefined();
  });
});
