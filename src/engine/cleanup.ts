/**
 * Deleting what backups created on Nutanix. Every recovery point this product creates is named
 * `sendense-<point id>`, so one found on Nutanix can be tied to its attempt even when the process died before
 * it could journal the id.
 */
import type { PrismClient } from '../prism/types.ts';
import type { Leftover } from '../repository/index.ts';

const namePrefix = 'sendense-';

export function recoveryPointName(pointId: string): string {
  return `${namePrefix}${pointId}`;
}

/** The export tag of an attempt's volume groups (v4 names them `sendense-export-<tag>-…`): its point id, lower case. */
export function exportTagOf(pointId: string): string {
  return pointId.toLowerCase();
}

/** Deletes the recovery point(s) of one attempt: the known id and any other carrying the attempt's name. */
export async function deleteAttemptRecoveryPoints(
  prism: PrismClient,
  vmUuid: string,
  pointId: string,
  knownId: string | undefined,
  signal?: AbortSignal,
): Promise<string[]> {
  const ids = new Set<string>(knownId ? [knownId] : []);
  for (const rp of await prism.listRecoveryPoints({ vmUuid, signal })) {
    if (rp.name === recoveryPointName(pointId)) ids.add(rp.id);
  }
  for (const id of ids) await prism.deleteRecoveryPoint(id, signal);
  return [...ids];
}

/**
 * Cleanup callback for a dead attempt's staging folder: its export volume groups (they hold the recovery point's
 * disks), then its journaled and its named recovery points.
 */
export async function releaseLeftover(prism: PrismClient, vmUuid: string, leftover: Leftover, signal?: AbortSignal): Promise<void> {
  await prism.releaseExportVolumeGroups(exportTagOf(leftover.pointId), signal);
  const journaled = leftover.journal?.resources.filter((r) => r.kind === 'recovery-point').map((r) => r.id) ?? [];
  for (const id of journaled) await prism.deleteRecoveryPoint(id, signal);
  await deleteAttemptRecoveryPoints(prism, vmUuid, leftover.pointId, undefined, signal);
}

/**
 * Base recovery points of this repository's older restore points that still exist on Nutanix (a delete that failed
 * after a commit). Only points of this repository are considered, so another repository protecting the same VM
 * keeps its bases. Called under the VM's repository lock.
 */
export async function sweepStaleRecoveryPoints(
  prism: PrismClient,
  vmUuid: string,
  olderPoints: readonly { pointId: string; recoveryPointId: string }[],
  signal?: AbortSignal,
): Promise<string[]> {
  if (olderPoints.length === 0) return [];
  const ids = new Set(olderPoints.map((p) => p.recoveryPointId));
  const names = new Set(olderPoints.map((p) => recoveryPointName(p.pointId)));
  const stale = (await prism.listRecoveryPoints({ vmUuid, signal })).filter((rp) => ids.has(rp.id) || names.has(rp.name));
  for (const rp of stale) await prism.deleteRecoveryPoint(rp.id, signal);
  return stale.map((rp) => rp.id);
}
