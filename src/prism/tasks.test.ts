import { describe, expect, it } from 'vitest';
import { defaultTaskWait, pollDelays } from './tasks.ts';

/** When the polls happen (ms after the task was submitted): the first is immediate, then the schedule's waits. */
function pollTimes(count: number): number[] {
  const delays = pollDelays(defaultTaskWait);
  const times = [0];
  while (times.length < count) times.push((times.at(-1) ?? 0) + delays.next().value);
  return times;
}

/** The poll that first sees a task finished after `durationMs`, and how many polls it took. */
function seenAt(durationMs: number): { atMs: number; polls: number } {
  const times = pollTimes(2_000);
  const index = times.findIndex((t) => t >= durationMs);
  return { atMs: times[index] ?? Infinity, polls: index + 1 };
}

describe('task polling schedule', () => {
  it('doubles from pollMs up to maxPollMs', () => {
    const delays = pollDelays({ pollMs: 20, maxPollMs: 100 });
    expect(Array.from({ length: 6 }, () => delays.next().value)).toEqual([20, 40, 80, 100, 100, 100]);
  });

  it('sees a task of a few tens of milliseconds within tens of milliseconds of its end', () => {
    for (const durationMs of [1, 10, 30, 50]) expect(seenAt(durationMs).atMs - durationMs).toBeLessThanOrEqual(Math.max(20, durationMs));
  });

  it('sees a task at most pollMs plus its own duration late, and never more than the cap late', () => {
    for (let durationMs = 1; durationMs <= 30 * 60_000; durationMs = Math.ceil(durationMs * 1.37)) {
      const late = seenAt(durationMs).atMs - durationMs;
      expect(late).toBeLessThanOrEqual(Math.min(defaultTaskWait.pollMs + durationMs, defaultTaskWait.maxPollMs));
    }
  });

  it('costs a real Prism few requests for a long task', () => {
    expect(seenAt(2 * 60_000).polls).toBeLessThanOrEqual(35);
    expect(seenAt(5_000).polls).toBeLessThanOrEqual(10);
  });
});
