/**
 * Retention: which restore points may go. Policy: keep the newest N, plus optionally the newest point of each of
 * the last D days / W ISO weeks / M months (UTC). Any ancestor of a kept point is kept too, so deleting never
 * breaks a chain; the price is that a long incremental chain keeps its full alive, which the engine bounds by
 * taking a new full periodically. Deletion is atomic per point (rename into a trash folder, then remove) and runs
 * children first, so a crash mid-way never leaves an orphaned overlay.
 */
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { AppError, ErrorCode } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { fsError, fsyncPath } from './durable-fs.ts';
import { trashPrefix, vmDir, type VmRef } from './layout.ts';
import { acquireVmLock } from './lock.ts';
import { listVmPoints, type RestorePoint } from './points.ts';

export interface RetentionPolicy {
  keepLast: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
}

export interface RetentionPlan {
  /** Point id → why it stays ("last 3", "daily 2026-11-26", "ancestor of …"). */
  keep: Map<string, string[]>;
  /** Deletable points, children before parents. */
  remove: RestorePoint[];
}

function assertCount(value: number | undefined, field: string): void {
  if (value !== undefined && (!Number.isInteger(value) || value < 0)) {
    throw new AppError(ErrorCode.InvalidInput, `${field}: ${value} is not a count`, { hint: `${field} must be a whole number ≥ 0` });
  }
}

/** ISO-8601 week key, e.g. 2026-W48 (weeks start Monday; week 1 holds the year's first Thursday). */
function isoWeek(date: Date): string {
  const d = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()));
  const day = d.getUTCDay() || 7;
  d.setUTCDate(d.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(d.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((d.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${d.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

const buckets: { field: keyof RetentionPolicy; label: string; key: (d: Date) => string }[] = [
  { field: 'keepDaily', label: 'daily', key: (d) => d.toISOString().slice(0, 10) },
  { field: 'keepWeekly', label: 'weekly', key: isoWeek },
  { field: 'keepMonthly', label: 'monthly', key: (d) => d.toISOString().slice(0, 7) },
];

/** Pure: `points` of one VM, newest last (as listVmPoints returns them). */
export function planRetention(points: RestorePoint[], policy: RetentionPolicy): RetentionPlan {
  assertCount(policy.keepLast, 'keepLast');
  for (const b of buckets) assertCount(policy[b.field], b.field);
  const keep = new Map<string, string[]>();
  const mark = (id: string, reason: string) => keep.set(id, [...(keep.get(id) ?? []), reason]);
  const newestFirst = [...points].reverse();
  newestFirst.slice(0, policy.keepLast).forEach((p) => mark(p.pointId, `last ${policy.keepLast}`));
  for (const bucket of buckets) {
    const count = policy[bucket.field] ?? 0;
    const seen = new Set<string>();
    for (const p of newestFirst) {
      const key = bucket.key(new Date(p.manifest.createdAt));
      if (seen.has(key)) continue;
      if (seen.size >= count) break;
      seen.add(key);
      mark(p.pointId, `${bucket.label} ${key}`);
    }
  }
  const byId = new Map(points.map((p) => [p.pointId, p]));
  for (const id of [...keep.keys()]) {
    let parent = byId.get(id)?.manifest.parentPointId ?? null;
    while (parent !== null) {
      mark(parent, `ancestor of ${id}`);
      parent = byId.get(parent)?.manifest.parentPointId ?? null;
    }
  }
  return { keep, remove: newestFirst.filter((p) => !keep.has(p.pointId)) };
}

/**
 * Deletes points of one VM under its lock, children first. Refuses (InvalidInput) a set that would leave a
 * surviving point without its parent.
 */
export async function deletePoints(vm: VmRef, pointIds: string[], options: { logger?: Logger } = {}): Promise<void> {
  const dir = vmDir(vm);
  const lock = await acquireVmLock(dir, `deletion in VM ${vm.vmUuid}`);
  try {
    const points = await listVmPoints(vm);
    const doomed = new Set(pointIds);
    for (const id of doomed) {
      if (!points.some((p) => p.pointId === id)) throw new AppError(ErrorCode.NotFound, `no restore point ${id} for VM ${vm.vmUuid}`);
    }
    const orphan = points.find((p) => !doomed.has(p.pointId) && p.manifest.parentPointId !== null && doomed.has(p.manifest.parentPointId));
    if (orphan) {
      throw new AppError(ErrorCode.InvalidInput, `deleting ${orphan.manifest.parentPointId} would break the chain of ${orphan.pointId}`, {
        hint: 'delete the incremental points that depend on it as well, or keep it',
      });
    }
    for (const point of [...points].reverse()) {
      if (!doomed.has(point.pointId)) continue;
      const trash = join(dir, `${trashPrefix}${point.pointId}-${randomBytes(3).toString('hex')}`);
      try {
        await rename(point.dir, trash);
      } catch (err) {
        throw fsError(err, 'move to trash', point.dir);
      }
      await fsyncPath(dir);
      await rm(trash, { recursive: true, force: true });
      options.logger?.info({ vmUuid: vm.vmUuid, pointId: point.pointId }, 'restore point deleted');
    }
  } finally {
    await lock.release();
  }
}

/** Plans retention for one VM and, unless `dryRun`, deletes what the plan allows. */
export async function applyRetention(vm: VmRef, policy: RetentionPolicy, options: { dryRun?: boolean; logger?: Logger } = {}): Promise<RetentionPlan> {
  const plan = planRetention(await listVmPoints(vm), policy);
  if (!options.dryRun && plan.remove.length) await deletePoints(vm, plan.remove.map((p) => p.pointId), options);
  return plan;
}
