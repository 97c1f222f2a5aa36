/**
 * Spaces requests to one Prism Central to at most N per second (NutanixCluster spec.concurrency.
 * prismRequestsPerSecond), so that many policies and runs never storm Prism's IAM and API gateway.
 * A token bucket with a burst of one second's worth.
 */
import { abortError } from '../lib/errors.ts';

export class RequestRateLimiter {
  private readonly intervalMs: number;
  private readonly burst: number;
  private tokens: number;
  private refilledAt: number;
  private queue: Promise<void> = Promise.resolve();
  private readonly now: () => number;

  constructor(requestsPerSecond: number, now: () => number = () => performance.now()) {
    this.now = now;
    this.intervalMs = 1000 / requestsPerSecond;
    this.burst = Math.max(1, Math.floor(requestsPerSecond));
    this.tokens = this.burst;
    this.refilledAt = this.now();
  }

  /** Resolves when the caller may send one request; callers are served in order. */
  acquire(signal?: AbortSignal): Promise<void> {
    const turn = this.queue.then(() => this.take(signal));
    this.queue = turn.catch(() => undefined);
    return turn;
  }

  private async take(signal?: AbortSignal): Promise<void> {
    for (;;) {
      if (signal?.aborted) throw abortError(signal, 'wait for the Prism request rate limit');
      const now = this.now();
      this.tokens = Math.min(this.burst, this.tokens + (now - this.refilledAt) / this.intervalMs);
      this.refilledAt = now;
      if (this.tokens >= 1) {
        this.tokens -= 1;
        return;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, (1 - this.tokens) * this.intervalMs);
        signal?.addEventListener(
          'abort',
          () => {
            clearTimeout(timer);
            resolve();
          },
          { once: true },
        );
      });
    }
  }
}
