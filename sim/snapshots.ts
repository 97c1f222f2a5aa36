/** Creating snapshots (v3 vm_snapshots and v4 recovery points share this): consistency outcome + freeze task. */
import { randomUUID } from 'node:crypto';
import type { Sim } from './server.ts';
import { Consistency, NgtMode, type SimVm, type Snapshot, type Task } from './state.ts';
import { TaskFailure } from './tasks.ts';

/** What an APPLICATION_CONSISTENT request yields for this VM: its NGT mode decides (flags are what it reports). */
export function consistencyOutcome(vm: SimVm, requested: Consistency): Consistency {
  if (requested === Consistency.Crash) return Consistency.Crash;
  if (vm.ngt.mode === NgtMode.Succeed) return Consistency.Application;
  if (vm.ngt.mode === NgtMode.Downgrade) return Consistency.Crash;
  const why = !vm.ngt.installed
    ? 'Nutanix Guest Tools are not installed'
    : !vm.ngt.reachable
      ? 'Nutanix Guest Tools are not reachable'
      : 'the guest failed to quiesce';
  throw new TaskFailure('DATAPROTECTION-50039', `Failed to take an application-consistent snapshot of VM '${vm.name}': ${why}.`);
}

export interface SnapshotRequest {
  api: Snapshot['api'];
  uuid?: string;
  name: string;
  requestedType: Consistency;
  vms: SimVm[];
  expirationTime?: string;
  operation: string;
  entityRel: string;
}

/** Records a PENDING snapshot and starts the task that freezes every VM's disks (COMPLETE or ERROR at the end). */
export function startSnapshot(sim: Sim, request: SnapshotRequest): { snapshot: Snapshot; task: Task } {
  const world = sim.world;
  const snapshot: Snapshot = {
    uuid: request.uuid ?? randomUUID(),
    api: request.api,
    name: request.name,
    requestedType: request.requestedType,
    state: 'PENDING',
    createdAt: new Date().toISOString(),
    expirationTime: request.expirationTime,
    taskUuid: '',
    requestedVmUuids: request.vms.map((vm) => vm.uuid),
    vms: [],
    specVersion: 0,
  };
  const entities: Task['entities'] = [
    ...request.vms.map((vm) => ({ extId: vm.uuid, rel: 'vmm:ahv:config:vm', kind: 'vm', name: vm.name })),
    { extId: snapshot.uuid, rel: request.entityRel, kind: request.api === 'v3' ? 'vm_snapshot' : 'recovery_point' },
  ];
  const task = sim.tasks.start(
    request.operation,
    request.vms[0]?.clusterUuid ?? '',
    entities,
    async () => {
      const outcomes = request.vms.map((vm) => ({ vm, type: consistencyOutcome(vm, request.requestedType) }));
      for (const { vm, type } of outcomes) {
        const disks = await world.freezeVm(snapshot.uuid, vm);
        snapshot.vms.push({ vmUuid: vm.uuid, vmRecoveryPointUuid: randomUUID(), type, disks });
      }
      snapshot.state = 'COMPLETE';
      world.changed();
      return { completionDetails: request.api === 'v4' ? [{ name: 'recoveryPointExtId', value: snapshot.uuid }] : [] };
    },
    (ended) => {
      if (snapshot.state !== 'PENDING') return;
      snapshot.state = 'ERROR';
      snapshot.errorMessage = ended.error?.message ?? `snapshot task ended ${ended.status}`;
      // Nothing of a failed snapshot stays behind (no orphaned files or recovery points).
      void world.deleteSnapshot(snapshot);
    },
  );
  snapshot.taskUuid = task.uuid;
  world.state.snapshots.push(snapshot);
  world.changed();
  return { snapshot, task };
}
