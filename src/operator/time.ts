/** Time formats of the Kubernetes API and an abortable sleep, shared by the runtime's loops. */
import { AppError, ErrorCode } from '../lib/errors.ts';

/** metav1.Time: RFC 3339 in UTC without fractions. */
export function rfc3339(date: Date): string {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** metav1.MicroTime: RFC 3339 with microseconds (Lease renewTime, Event eventTime). */
export function microTime(date: Date): string {
  return date.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

/** Waits `ms`, or less when `signal` aborts first; never rejects. */
export function sleepUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses "500ms", "30s", "5m", "1h30m" into milliseconds; `field` names the flag or field in the error. */
export function parseDuration(text: string, field: string): number {
  const parts = [...text.trim().matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)];
  const total = parts.reduce((sum, [, value, unit]) => sum + Number(value) * (durationUnits[unit ?? ''] ?? 0), 0);
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text.trim() || !(total > 0)) {
    throw new AppError(ErrorCode.InvalidInput, `${field}: "${text}" is not a duration`, { hint: 'use e.g. 500ms, 30s, 5m or 1h30m' });
  }
  return Math.round(total);
}

/**
 * A signal that aborts with `parent` or after `timeoutMs`, whichever comes first; call `dispose` when done.
 * Not AbortSignal.any + AbortSignal.timeout: the composite holds its sources weakly, so a collected timeout
 * signal can silently never fire (nodejs/node#65995); here the timer and controller are held strongly.
 */
export function signalWithTimeout(parent: AbortSignal, timeoutMs: number, what: string): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const onParentAbort = (): void => controller.abort(parent.reason);
  const timer = setTimeout(() => controller.abort(new Error(`${what} timed out after ${timeoutMs} ms`)), timeoutMs);
  if (parent.aborted) onParentAbort();
  else parent.addEventListener('abort', onParentAbort, { once: true });
  return {
    signal: controller.signal,
    dispose: () => {
      clearTimeout(timer);
      parent.removeEventListener('abort', onParentAbort);
    },
  };
}
