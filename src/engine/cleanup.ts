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

/** Cleanup callback for a dead attempt's staging folder: its journaled and its named recovery points. */
export async function releaseLeftover(prism: PrismClient, vmUuid: string, leftover: Leftover, signal?: AbortSignal): Promise<void> {
  const journaled = leftover.journal?.resources.filter((r) => r.kind === 'recovery-point').map((r) => r.id) ?? [];
  for (const id of journaled) await prism.deleteRecoveryPoint(id, signal);
  await deleteAttemptRecoveryPoints(prism, vmUuid, leftover.pointId, undefined, signal);
}

/**
 * Recovery points of this product for the VM that no restore point uses as its base any more (an old base whose
 * delete failed after a commit). Called under the VM's repository lock, so no live attempt owns any of them.
 */
export async function sweepStaleRecoveryPoints(prism: PrismClient, vmUuid: string, keepIds: ReadonlySet<string>, signal?: AbortSignal): Promise<string[]> {
  const stale = (await prism.listRecoveryPoints({ vmUuid, signal })).filter((rp) => rp.name.startsWith(namePrefix) && !keepIds.has(rp.id));
  for (const rp of stale) await prism.deleteRecoveryPoint(rp.id, signal);
  return stale.map((rp) => rp.id);
}
