/**
 * Prism v3: PC intent API for VMs/clusters/tasks, PE v3 `vm_snapshots` and `data/changed_regions` for recovery
 * points and CRT (used when the endpoint has no v4, i.e. an older Prism Central or a Prism Element).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ZodType } from 'zod';
import { AppError, ErrorCode, abortError, isAppError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import type { Region } from '../mover/types.ts';
import type { PrismHttp } from './http.ts';
import { clipRegions, idempotencyUuid, indexDisks } from './model.ts';
import {
  type V3ListRequest,
  type V3Snapshot,
  type V3Vm,
  v3ChangedRegionsRequestSchema,
  v3ChangedRegionsSchema,
  v3ClusterListSchema,
  v3DeleteResponseSchema,
  v3IdempotenceIdentifiersSchema,
  v3IdempotenceRequestSchema,
  v3ListRequestSchema,
  v3PrismCentralSchema,
  v3SnapshotCreateRequestSchema,
  v3SnapshotListSchema,
  v3SnapshotSchema,
  v3VmListSchema,
  v3VmSchema,
} from './schemas.ts';
import { type TaskWaitOptions, pathSegment, pollDelays, waitForV3Task } from './tasks.ts';
import type {
  ChangedRegionsRequest,
  ClusterInfo,
  DiskExport,
  DiskRecoveryPoint,
  PreparedExport,
  RecoveryPoint,
  Vm,
  VmDisk,
  CreateRecoveryPointRequest,
} from './types.ts';

const base = '/api/nutanix/v3';
/** The v3 maximum page (default 20): fewest round trips. */
const v3PageLength = 500;
const mib = 1024 * 1024;

export interface BackendDeps {
  http: PrismHttp;
  log: Logger;
  taskWait: TaskWaitOptions;
}

export class V3Backend {
  private readonly http: PrismHttp;
  private readonly log: Logger;
  private readonly taskWait: TaskWaitOptions;

  constructor(deps: BackendDeps) {
    this.http = deps.http;
    this.log = deps.log;
    this.taskWait = deps.taskWait;
  }

  async clusters(signal?: AbortSignal): Promise<ClusterInfo[]> {
    const entities = await this.listAll('clusters/list', { kind: 'cluster' }, v3ClusterListSchema, 'list clusters', signal);
    return entities.map((c) => {
      const config = c.status?.resources?.config;
      const isPrismCentral = config?.service_list?.includes('PRISM_CENTRAL') ?? false;
      return {
        uuid: c.metadata.uuid,
        name: c.status?.name ?? c.spec?.name ?? c.metadata.uuid,
        isPrismCentral,
        version: config?.software_map?.NOS?.version ?? config?.build?.version ?? undefined,
        dataServicesIp: c.status?.resources?.network?.external_data_services_ip ?? undefined,
      };
    });
  }

  /** The PC version from `GET prism_central`; undefined on a Prism Element, which has no such entity. */
  async prismCentralVersion(signal?: AbortSignal): Promise<string | undefined> {
    const res = await this.http.requestIfExists({
      method: 'GET',
      path: `${base}/prism_central`,
      schema: v3PrismCentralSchema.nullish(),
      retrySafe: true,
      signal,
      what: 'read the Prism Central version',
    });
    return res?.data?.resources?.version ?? undefined;
  }

  async listVms(options: { name?: string; signal?: AbortSignal } = {}): Promise<Vm[]> {
    const request: V3ListRequest = { kind: 'vm' };
    // FIQL has no documented escaping: names with its reserved characters are matched here, not by Prism.
    if (options.name !== undefined && !/[,;()'"\\=!<>~*]/.test(options.name)) request.filter = `vm_name==${options.name}`;
    const entities = await this.listAll('vms/list', request, v3VmListSchema, 'list VMs', options.signal);
    const vms = entities.map(toVm);
    // FIQL `==` on names is not an exact match on every Prism version.
    return options.name === undefined ? vms : vms.filter((vm) => vm.name === options.name);
  }

  async getVm(uuid: string, signal?: AbortSignal): Promise<Vm> {
    const res = await this.http.request({
      method: 'GET',
      path: `${base}/vms/${pathSegment(uuid)}`,
      schema: v3VmSchema,
      retrySafe: true,
      signal,
      what: `get VM ${uuid}`,
    });
    return toVm(res.data);
  }

  async createRecoveryPoint(request: CreateRecoveryPointRequest): Promise<RecoveryPoint> {
    const { signal } = request;
    const what = `create recovery point "${request.name}" of VM ${request.vm.name}`;
    const uuid = await this.reserveUuid(request.requestId, !request.firstUse, signal);
    // A previous attempt with the same key may have got as far as creating it.
    let snapshot = request.firstUse ? undefined : await this.fetchSnapshot(uuid, signal);
    if (!snapshot) {
      const body = v3SnapshotCreateRequestSchema.parse({
        api_version: '3.1',
        metadata: { kind: 'vm_snapshot', uuid },
        spec: {
          name: request.name.slice(0, 64),
          snapshot_type: request.consistency,
          ...(request.expiresAt ? { expiration_time_msecs: request.expiresAt.getTime() } : {}),
          resources: { entity_uuid: request.vm.uuid },
        },
      });
      const created = await this.http
        .request({
          method: 'POST',
          path: `${base}/vm_snapshots`,
          body,
          schema: v3SnapshotSchema.nullish(),
          // metadata.uuid makes the create idempotent: a repeat names the same snapshot.
          retrySafe: true,
          signal,
          what,
        })
        .catch((err: unknown) => {
          // 409: an earlier attempt already created this UUID; waiting for it below is all that is left.
          if (isAppError(err) && err.code === ErrorCode.Conflict) return undefined;
          throw err;
        });
      const task = taskUuid(created?.data?.status?.execution_context?.task_uuid);
      if (task) await waitForV3Task(this.http, task, what, this.taskWait, signal);
    }
    snapshot = await this.waitForSnapshot(uuid, what, signal);
    const point = toRecoveryPoint(snapshot);
    if (point.consistency !== request.consistency) {
      this.log.warn({ vm: request.vm.name, requested: request.consistency, produced: point.consistency }, 'Prism produced a different consistency');
    }
    return point;
  }

  async getRecoveryPoint(id: string, signal?: AbortSignal): Promise<RecoveryPoint | undefined> {
    const snapshot = await this.fetchSnapshot(id, signal);
    return snapshot ? toRecoveryPoint(snapshot) : undefined;
  }

  async listRecoveryPoints(options: { vmUuid: string; signal?: AbortSignal }): Promise<RecoveryPoint[]> {
    const entities = await this.listAll(
      'vm_snapshots/list',
      { kind: 'vm_snapshot', filter: `entity_uuid==${options.vmUuid}` },
      v3SnapshotListSchema,
      `list recovery points of VM ${options.vmUuid}`,
      options.signal,
    );
    return entities.map(toRecoveryPoint).filter((p) => p.vmUuid === options.vmUuid);
  }

  async deleteRecoveryPoint(id: string, signal?: AbortSignal): Promise<void> {
    const what = `delete recovery point ${id}`;
    const res = await this.http.requestIfExists({
      method: 'DELETE',
      path: `${base}/vm_snapshots/${pathSegment(id)}`,
      schema: v3DeleteResponseSchema,
      // Repeating a delete is harmless: "already gone" (404) counts as deleted.
      retrySafe: true,
      signal,
      what,
    });
    if (!res) return;
    const task = taskUuid(res.data?.status?.execution_context?.task_uuid);
    if (task) await waitForV3Task(this.http, task, what, this.taskWait, signal);
  }

  async *changedRegions(request: ChangedRegionsRequest): AsyncIterable<Region> {
    const path = snapshotFilePath(request.disk, 'disk');
    const referencePath = request.reference ? snapshotFilePath(request.reference.disk, 'reference disk') : undefined;
    const start = request.offset ?? 0;
    const end = request.length === undefined ? undefined : start + request.length;
    let position = start;
    for (;;) {
      const body = v3ChangedRegionsRequestSchema.parse({
        snapshot_file_path: path,
        ...(referencePath ? { reference_snapshot_file_path: referencePath } : {}),
        start_offset: position,
        ...(end !== undefined ? { end_offset: end } : {}),
      });
      const res = await this.http.request({
        method: 'POST',
        path: `${base}/data/changed_regions`,
        body,
        schema: v3ChangedRegionsSchema,
        // A query: repeating it changes nothing.
        retrySafe: true,
        signal: request.signal,
        what: `changed regions of ${path}`,
      });
      const limit = end ?? res.data.file_size ?? Number.MAX_SAFE_INTEGER;
      const regions = (res.data.region_list ?? []).map((r) => ({ offset: r.offset, length: r.length, type: r.type }));
      regions.sort((a, b) => a.offset - b.offset);
      yield* clipRegions(regions, position, limit);
      const next = res.data.next_offset;
      if (next === undefined || next === null || next >= limit) return;
      if (next <= position) {
        throw new AppError(ErrorCode.BadResponse, `changed regions of ${path}: next_offset ${next} does not advance past ${position}`);
      }
      position = next;
    }
  }

  /** A snapshot file needs no export: nothing to prepare. */
  prepareExport(): Promise<PreparedExport | undefined> {
    return Promise.resolve(undefined);
  }

  exportDisk(request: { disk: DiskRecoveryPoint }): Promise<DiskExport> {
    // The snapshot file is readable where it lies; deleting the recovery point is what frees it.
    return Promise.resolve({ kind: 'file', path: snapshotFilePath(request.disk, 'disk'), release: () => Promise.resolve() });
  }

  /** Pages a v3 list endpoint to the end (offset until total_matches). */
  private async listAll<E>(
    endpoint: string,
    request: V3ListRequest,
    schema: ZodType<{ metadata: { total_matches?: number | null }; entities?: E[] | null }>,
    what: string,
    signal?: AbortSignal,
  ): Promise<E[]> {
    const all: E[] = [];
    for (let offset = 0; ; ) {
      const body = v3ListRequestSchema.parse({ ...request, offset, length: v3PageLength });
      const res = await this.http.request({ method: 'POST', path: `${base}/${endpoint}`, body, schema, retrySafe: true, signal, what });
      const page = res.data.entities ?? [];
      all.push(...page);
      offset += page.length;
      const total = res.data.metadata.total_matches ?? 0;
      if (page.length === 0 || offset >= total) return all;
    }
  }

  /**
   * v3 idempotence identifiers keyed by the request id: the same key always yields the same snapshot UUID.
   * `lookUp`: the key may have been reserved by an earlier attempt; look for that reservation first.
   */
  private async reserveUuid(requestId: string, lookUp: boolean, signal?: AbortSignal): Promise<string> {
    const clientIdentifier = `sendense-${idempotencyUuid(requestId)}`;
    const path = `${base}/idempotence_identifiers`;
    const existing = !lookUp ? undefined : await this.http.requestIfExists({
      method: 'GET',
      path: `${path}/${pathSegment(clientIdentifier)}`,
      schema: v3IdempotenceIdentifiersSchema,
      retrySafe: true,
      signal,
      what: 'look up idempotence identifier',
    });
    if (existing) return firstUuid(existing.data.uuid_list);
    const created = await this.http.request({
      method: 'POST',
      path,
      body: v3IdempotenceRequestSchema.parse({ client_identifier: clientIdentifier, count: 1, valid_duration_in_minutes: 7 * 24 * 60 }),
      schema: v3IdempotenceIdentifiersSchema,
      // Keyed by client_identifier: a repeat returns the same reservation.
      retrySafe: true,
      signal,
      what: 'reserve idempotence identifier',
    });
    return firstUuid(created.data.uuid_list);
  }

  private async fetchSnapshot(uuid: string, signal?: AbortSignal): Promise<V3Snapshot | undefined> {
    const res = await this.http.requestIfExists({
      method: 'GET',
      path: `${base}/vm_snapshots/${pathSegment(uuid)}`,
      schema: v3SnapshotSchema,
      retrySafe: true,
      signal,
      what: `get recovery point ${uuid}`,
    });
    return res?.data;
  }

  /** The snapshot once COMPLETE: task success can precede the entity's state change by a moment. */
  private async waitForSnapshot(uuid: string, what: string, signal?: AbortSignal): Promise<V3Snapshot> {
    const deadline = Date.now() + this.taskWait.timeoutMs;
    const delays = pollDelays(this.taskWait);
    for (;;) {
      const delay = delays.next().value;
      const snapshot = await this.fetchSnapshot(uuid, signal);
      const state = snapshot?.status?.state;
      if (snapshot && (state === 'COMPLETE' || (state == null && snapshot.status?.snapshot_file_list))) return snapshot;
      if (state === 'ERROR') {
        const detail = snapshot?.status?.message_list?.map((m) => m.message).filter(Boolean).join('; ') || 'state ERROR';
        throw new AppError(ErrorCode.TaskFailed, `${what}: ${detail}`);
      }
      if (Date.now() + delay > deadline) {
        throw new AppError(ErrorCode.Timeout, `${what}: snapshot ${uuid} not complete within ${Math.round(this.taskWait.timeoutMs / 1000)} s`, { retryable: true });
      }
      try {
        await sleep(delay, undefined, signal ? { signal } : undefined);
      } catch {
        throw abortError(signal, what);
      }
    }
  }
}

function firstUuid(list: string[]): string {
  const uuid = list[0];
  if (!uuid) throw new AppError(ErrorCode.BadResponse, 'idempotence identifiers: empty uuid_list');
  return uuid;
}

function taskUuid(value: string | string[] | null | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : (value ?? undefined);
}

function snapshotFilePath(disk: DiskRecoveryPoint, role: string): string {
  if (!disk.snapshotFilePath) {
    throw new AppError(ErrorCode.InvalidInput, `${role} ${disk.diskUuid} has no snapshot_file_path`, {
      hint: 'a v3 recovery point is needed here; v4 recovery points go through the v4 client',
    });
  }
  return disk.snapshotFilePath;
}

export function toVm(raw: V3Vm): Vm {
  const resources = raw.status?.resources ?? raw.spec?.resources;
  const cluster = raw.status?.cluster_reference ?? raw.spec?.cluster_reference;
  const ngt = resources?.guest_tools?.nutanix_guest_tools;
  const disks: Omit<VmDisk, 'index'>[] = [];
  for (const d of resources?.disk_list ?? []) {
    const type = d.device_properties?.device_type ?? 'DISK';
    const address = d.device_properties?.disk_address;
    // Only real disks: CD-ROMs and volume-group attachments are not part of the VM's backup.
    if (type !== 'DISK' || d.volume_group_reference || !d.uuid || !address) continue;
    const container = d.storage_config?.storage_container_reference;
    disks.push({
      uuid: d.uuid,
      busType: address.adapter_type,
      deviceIndex: address.device_index,
      sizeBytes: d.disk_size_bytes ?? (d.disk_size_mib ?? 0) * mib,
      ...(container ? { container: { uuid: container.uuid ?? undefined, name: container.name ?? undefined } } : {}),
    });
  }
  return {
    uuid: raw.metadata.uuid,
    name: raw.status?.name ?? raw.spec?.name ?? raw.metadata.uuid,
    cluster: { uuid: cluster?.uuid ?? '', ...(cluster?.name ? { name: cluster.name } : {}) },
    powerState: resources?.power_state ?? 'UNKNOWN',
    numSockets: resources?.num_sockets ?? undefined,
    numVcpusPerSocket: resources?.num_vcpus_per_socket ?? undefined,
    memorySizeMib: resources?.memory_size_mib ?? undefined,
    ngt: {
      installed: ngt?.ngt_state === 'INSTALLED',
      enabled: ngt?.state === 'ENABLED',
      reachable: ngt?.is_reachable ?? false,
      vssSnapshotCapable: ngt?.vss_snapshot_capable ?? ngt?.enabled_capability_list?.includes('VSS_SNAPSHOT') ?? false,
      ...(ngt?.version ? { version: ngt.version } : {}),
    },
    categories: raw.metadata.categories ?? {},
    disks: indexDisks(disks),
    nics: (resources?.nic_list ?? []).map((n) => ({
      uuid: n.uuid ?? undefined,
      macAddress: n.mac_address ?? undefined,
      subnet: n.subnet_reference ? { uuid: n.subnet_reference.uuid ?? undefined, name: n.subnet_reference.name ?? undefined } : undefined,
      ipAddresses: (n.ip_endpoint_list ?? []).map((e) => e.ip).filter((ip): ip is string => !!ip),
    })),
  };
}

export function toRecoveryPoint(raw: V3Snapshot): RecoveryPoint {
  const consistency = raw.status?.snapshot_type ?? raw.spec?.snapshot_type;
  if (!consistency) {
    throw new AppError(ErrorCode.BadResponse, `recovery point ${raw.metadata.uuid}: Prism reported no snapshot_type`);
  }
  return {
    id: raw.metadata.uuid,
    generation: 'v3',
    name: raw.status?.name ?? raw.spec?.name ?? '',
    vmUuid: raw.status?.resources?.entity_uuid ?? raw.spec?.resources?.entity_uuid ?? '',
    consistency,
    createdAt: raw.metadata.creation_time ?? undefined,
    // file_path names the live vdisk, whose last path segment is the VM disk's UUID.
    disks: (raw.status?.snapshot_file_list ?? []).map((f) => ({
      diskUuid: (f.file_path ?? f.snapshot_file_path).split('/').pop() ?? '',
      snapshotFilePath: f.snapshot_file_path,
    })),
  };
}
