import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { parseDuration, signalWithTimeout } from './time.ts';

describe('parseDuration', () => {
  it('parses units and combinations', () => {
    expect(parseDuration('500ms', '--x')).toBe(500);
    expect(parseDuration('30s', '--x')).toBe(30_000);
    expect(parseDuration('1h30m', '--x')).toBe(5_400_000);
  });
  it('names the flag in its error', () => {
    expect(() => parseDuration('soon', '--lease-duration')).toThrow(/--lease-duration: "soon" is not a duration/);
    expect(() => parseDuration('5 minutes', '--x')).toThrow(/not a duration/);
    expect(() => parseDuration('0s', '--x')).toThrow(/not a duration/);
  });
});

describe('signalWithTimeout', () => {
  it('aborts with the parent, keeping its reason', () => {
    const parent = new AbortController();
    const { signal, dispose } = signalWithTimeout(parent.signal, 60_000, 'reconcile');
    expect(signal.aborted).toBe(false);
    parent.abort(new Error('leadership lost'));
    expect(signal.aborted).toBe(true);
    expect((signal.reason as Error).message).toBe('leadership lost');
    dispose();
  });
  it('aborts by itself when the time is up, naming what timed out', async () => {
    const { signal, dispose } = signalWithTimeout(new AbortController().signal, 5, 'lease update');
    await once(signal, 'abort');
    expect((signal.reason as Error).message).toBe('lease update timed out after 5 ms');
    dispose();
  });
  it('is aborted at once when the parent already is', () => {
    const parent = AbortSignal.abort(new Error('stopped'));
    expect(signalWithTimeout(parent, 60_000, 'x').signal.aborted).toBe(true);
  });
});
