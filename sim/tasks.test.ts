import { describe, expect, it } from 'vitest';
import { FaultSet } from './faults.ts';
import { parseDuration } from './main.ts';
import { generateInventory, TaskStatus } from './state.ts';
import { parseTaskDurations, TaskEngine } from './tasks.ts';

describe('--task-duration', () => {
  it('takes one duration for every task, or Operation=duration pairs with a default', () => {
    expect(parseTaskDurations('250ms', parseDuration)).toEqual({ defaultMs: 250, byOperation: {} });
    expect(parseTaskDurations('default=500ms, CreateRecoveryPoint=3s,vm_snapshot_create=2.5s', parseDuration)).toEqual({
      defaultMs: 500,
      byOperation: { CreateRecoveryPoint: 3000, vm_snapshot_create: 2500 },
    });
    expect(parseTaskDurations('AttachIscsiClient=1s', parseDuration)).toEqual({ defaultMs: 0, byOperation: { AttachIscsiClient: 1000 } });
    expect(() => parseTaskDurations('CreateRecoveryPoint=3s=4s', parseDuration)).toThrow(/not Operation=duration/);
    expect(() => parseTaskDurations('CreateRecoveryPoint=soon', parseDuration)).toThrow(/CreateRecoveryPoint.*not a duration/);
  });

  it('keeps a task of a slow operation RUNNING while the others complete', async () => {
    const state = generateInventory({ vms: 1, disksPerVm: 1, diskSizeBytes: 1 << 20, seed: 1, clusters: 1 });
    const tasks = new TaskEngine(state, new FaultSet(), { defaultMs: 0, byOperation: { SlowOperation: 600_000 } }, () => {});
    try {
      const slow = tasks.start('SlowOperation', '', [], () => Promise.resolve({}));
      const fast = tasks.start('FastOperation', '', [], () => Promise.resolve({}));
      expect(await tasks.waitForAny([fast.uuid], 60_000, new AbortController().signal)).toBe(true);
      expect(fast.status).toBe(TaskStatus.Succeeded);
      expect(slow.status).toBe(TaskStatus.Running);
    } finally {
      tasks.cancelAll();
    }
  });
});
