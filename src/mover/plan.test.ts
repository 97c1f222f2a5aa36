import { describe, expect, it } from 'vitest';
import { planCopy, type CopyAction, type PlanOptions } from './plan.ts';
import { RegionType, type Region } from './types.ts';

const K = 1024;
const CS = 64 * K;

function plan(regions: Region[], options: Partial<PlanOptions> = {}): { actions: CopyAction[]; changedBytes: number; zeroBytes: number } {
  const totals = { changedBytes: 0, zeroBytes: 0 };
  const actions: CopyAction[] = [];
  for (const a of planCopy(regions, { sizeBytes: 10 * CS + 512, clusterSize: CS, maxDataBytes: 4 * CS, overlay: true, ...options }, totals)) actions.push(a);
  return { actions, ...totals };
}

const data = (offset: number, length: number): Region => ({ offset, length, type: RegionType.Regular });
const zero = (offset: number, length: number): Region => ({ offset, length, type: RegionType.Zeroed });

describe('planCopy', () => {
  it('widens unaligned data to whole clusters and reads a shared cluster once', () => {
    const { actions } = plan([data(100, 10), data(CS - 5, 10), data(3 * CS + 1, 1)]);
    expect(actions).toEqual([
      { kind: 'data', offset: 0, length: 2 * CS },
      { kind: 'data', offset: 3 * CS, length: CS },
    ]);
  });

  it('overlay: whole zeroed clusters become zero actions, partial ones are copied from the source', () => {
    const { actions, zeroBytes } = plan([zero(CS / 2, 3 * CS)]);
    expect(actions).toEqual([
      { kind: 'data', offset: 0, length: CS },
      { kind: 'zero', offset: CS, length: 2 * CS },
      { kind: 'data', offset: 3 * CS, length: CS },
    ]);
    expect(zeroBytes).toBe(2 * CS);
  });

  it('full image: zeroed regions produce nothing, a zeroed region inside one cluster neither', () => {
    const { actions, changedBytes } = plan([zero(0, 5 * CS), zero(6 * CS + 10, 20)], { overlay: false });
    expect(actions).toEqual([]);
    expect(changedBytes).toBe(5 * CS + 20);
  });

  it('splits long data runs and keeps the short last cluster of the disk', () => {
    const { actions } = plan([data(CS, 9 * CS + 512)]);
    expect(actions).toEqual([
      { kind: 'data', offset: CS, length: 4 * CS },
      { kind: 'data', offset: 5 * CS, length: 4 * CS },
      { kind: 'data', offset: 9 * CS, length: CS + 512 },
    ]);
  });

  it('a zeroed region reaching the disk end zeroes the short last cluster too', () => {
    const { actions } = plan([zero(9 * CS, CS + 512)]);
    expect(actions).toEqual([{ kind: 'zero', offset: 9 * CS, length: CS + 512 }]);
  });

  it('rejects overlapping, unsorted or out-of-range regions', () => {
    expect(() => plan([data(0, 100), data(50, 100)])).toThrow(expect.objectContaining({ code: 'INVALID_INPUT' }));
    expect(() => plan([data(CS, 1), data(0, 1)])).toThrow(/precedes/);
    expect(() => plan([data(10 * CS, CS)])).toThrow(/outside/);
    expect(() => plan([data(0, 0)])).toThrow(/empty/);
  });
});
