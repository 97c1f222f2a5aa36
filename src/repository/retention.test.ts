import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { vmDir, type VmRef } from './layout.ts';
import { listVmPoints, type RestorePoint } from './points.ts';
import { applyRetention, deletePoints, planRetention } from './retention.ts';
import { MiB, ReferenceDisks, commitTestPoint, tempDir } from './test-repo.ts';
import { verifyRepository } from './verify.ts';

describe('retention', () => {
  let work: Awaited<ReturnType<typeof tempDir>>;
  let vm: VmRef;
  /** full(Nov 2) ← inc(Nov 2) ← inc(Nov 3);  full(Nov 10) ← inc(Nov 11) ← inc(Nov 12) */
  let points: RestorePoint[];

  beforeEach(async () => {
    work = await tempDir('repo-retention-');
    vm = { repo: join(work.path, 'repo'), clusterUuid: 'cluster-1', vmUuid: 'vm-1' };
    const reference = new ReferenceDisks(work.path, [16 * MiB]);
    await reference.create();
    const at = (day: number, hour: number) => new Date(Date.UTC(2026, 10, day, hour));
    const write = (i: number) => [[{ offset: i * MiB, length: 64 * 1024, pattern: i + 1 }]];
    points = [];
    let parent: string | null = null;
    for (const [i, [day, hour, full]] of ([[2, 1, true], [2, 9, false], [3, 1, false], [10, 1, true], [11, 1, false], [12, 1, false]] as const).entries()) {
      const point: RestorePoint = await commitTestPoint(vm, full ? null : parent, write(i), reference, at(day, hour));
      points.push(point);
      parent = point.pointId;
    }
  });
  afterEach(async () => work.remove());

  const ids = (list: RestorePoint[]) => list.map((p) => points.findIndex((q) => q.pointId === p.pointId));

  it('keeps the ancestors of every kept point', () => {
    const plan = planRetention(points, { keepLast: 1 });
    expect(ids(plan.remove)).toEqual([2, 1, 0]);
    expect(plan.keep.get(points[3]!.pointId)).toEqual([`ancestor of ${points[5]!.pointId}`]);

    // Nov 3 is the 4th newest day: keeping it keeps its whole chain, so nothing can go.
    expect(planRetention(points, { keepLast: 1, keepDaily: 4 }).remove).toEqual([]);
    // Weekly: newest of ISO weeks 46 (Nov 12) and 45 (Nov 3) → the same, nothing can go.
    expect(planRetention(points, { keepLast: 0, keepWeekly: 2 }).remove).toEqual([]);
    expect(ids(planRetention(points, { keepLast: 0, keepWeekly: 1 }).remove)).toEqual([2, 1, 0]);
    expect(planRetention(points, { keepLast: 0, keepMonthly: 1 }).keep.get(points[5]!.pointId)).toEqual(['monthly 2026-11']);
    expect(() => planRetention(points, { keepLast: -1 })).toThrow(/keepLast/);
  });

  it('deletes whole chains atomically and leaves every remaining chain verifiable', async () => {
    const plan = await applyRetention(vm, { keepLast: 2 });
    expect(ids(plan.remove)).toEqual([2, 1, 0]);
    expect((await listVmPoints(vm)).map((p) => p.pointId)).toEqual(points.slice(3).map((p) => p.pointId));
    expect((await readdir(vmDir(vm))).filter((n) => n.startsWith('.'))).toEqual([]);
    const report = await verifyRepository(vm.repo);
    expect(report.issues).toEqual([]);
    expect(report.points).toBe(3);
  });

  it('refuses a deletion that would orphan an incremental', async () => {
    await expect(deletePoints(vm, [points[3]!.pointId])).rejects.toMatchObject({ code: 'INVALID_INPUT', message: new RegExp(points[4]!.pointId) });
    expect(await listVmPoints(vm)).toHaveLength(6);
    await deletePoints(vm, [points[5]!.pointId, points[4]!.pointId]);
    expect(ids(await listVmPoints(vm))).toEqual([0, 1, 2, 3]);
  });
});
