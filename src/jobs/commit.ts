/**
 * `mover commit`: makes the run's restore point visible once every disk Job succeeded, then deletes the
 * superseded base recovery point on Nutanix and applies restore-point retention. `mover cleanup`: removes a failed
 * attempt's staging folder.
 */
import { releaseLeftover } from '../engine/cleanup.ts';
import type { Logger } from '../lib/log.ts';
import type { PrismClient } from '../prism/types.ts';
import { applyRetention, commitSharedPoint, removeSharedPoint } from '../repository/index.ts';
import type { CleanupJobResult, CleanupRequest, CommitJobResult, CommitRequest } from './contract.ts';
import { patchStatusReliably, type JsonPatchOp, type RunStatusWriter } from './run-status.ts';
import { repositoryVm } from './runtime.ts';

export interface CommitJobDeps {
  prism: PrismClient;
  status: RunStatusWriter;
  log: Logger;
  signal: AbortSignal;
}

export async function runCommitJob(request: CommitRequest, deps: CommitJobDeps): Promise<CommitJobResult> {
  const { prism, log, signal } = deps;
  const vm = repositoryVm(request);
  const point = await commitSharedPoint(vm, request.pointId, {
    diskIndexes: request.diskIndexes,
    fullTypeReason: request.typeReason,
    vm: request.vmConfig,
    consistency: request.consistency,
    recoveryPoint: request.recoveryPoint,
    cleanupLeftover: (leftover) => releaseLeftover(prism, request.vm.uuid, leftover, signal),
    logger: log,
    signal,
  });
  const { manifest } = point;
  // The point is committed and safe from here on: what follows may fail without undoing it.
  const deletedRecoveryPointIds: string[] = [];
  for (const id of request.supersededRecoveryPointIds.filter((id) => id !== manifest.recoveryPoint.id)) {
    try {
      await prism.deleteRecoveryPoint(id, signal);
      deletedRecoveryPointIds.push(id);
    } catch (err) {
      log.warn({ recoveryPoint: id, err: err instanceof Error ? err.message : String(err) }, 'superseded recovery point not deleted; the next backup sweeps it');
    }
  }
  const retention = request.retention ? await applyRetention(vm, request.retention, { logger: log }) : undefined;
  const totals = manifest.disks.reduce(
    (sum, d) => ({
      sizeBytes: sum.sizeBytes + d.logicalSizeBytes,
      changedBytes: sum.changedBytes + d.stats.changedBytes,
      transferredBytes: sum.transferredBytes + d.stats.transferredBytes,
      zeroBytes: sum.zeroBytes + d.stats.zeroBytes,
    }),
    { sizeBytes: 0, changedBytes: 0, transferredBytes: 0, zeroBytes: 0 },
  );
  const ops: JsonPatchOp[] = [
    { op: 'add', path: '/status/backupType', value: manifest.type === 'full' ? 'Full' : 'Incremental' },
    { op: 'add', path: '/status/backupTypeReason', value: manifest.typeReason },
    { op: 'add', path: '/status/totals', value: totals },
  ];
  await patchStatusReliably(deps.status, ops, signal);
  log.info({ pointId: point.pointId, type: manifest.type, leftovers: point.leftoversRemoved, deletedRecoveryPointIds }, 'restore point committed');
  return {
    kind: 'commit',
    pointId: point.pointId,
    type: manifest.type,
    typeReason: manifest.typeReason,
    parentPointId: manifest.parentPointId,
    leftoversRemoved: point.leftoversRemoved,
    deletedRecoveryPointIds,
    retentionDeletedPointIds: retention?.remove.map((p) => p.pointId) ?? [],
  };
}

export async function runCleanupJob(request: CleanupRequest, deps: { log: Logger }): Promise<CleanupJobResult> {
  const removed = await removeSharedPoint(repositoryVm(request), request.pointId, { logger: deps.log });
  return { kind: 'cleanup', pointId: request.pointId, removed };
}
