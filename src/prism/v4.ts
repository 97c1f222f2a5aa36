/**
 * Prism v4: vmm VMs, dataprotection recovery points and CRT, prism tasks, clustermgmt clusters and volumes
 * (volume groups exported over iSCSI). Paths and JSON names follow the official v4 Go SDKs.
 */
import { randomUUID } from 'node:crypto';
import type { z } from 'zod';
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import type { Region } from '../mover/types.ts';
import type { PrismHttp } from './http.ts';
import { clipRegions, idempotencyUuid, indexDisks } from './model.ts';
import {
  type V4RecoveryPoint,
  type V4Vm,
  ignoredBodySchema,
  v4CategorySchema,
  v4ChangedRegionSchema,
  v4ChangedRegionsRequestSchema,
  v4ClusterInfoSchema,
  v4ClusterSchema,
  v4DiscoverClusterRequestSchema,
  v4Envelope,
  v4IscsiAttachmentSchema,
  v4IscsiClientSchema,
  v4ListEnvelope,
  v4RecoveryPointCreateSchema,
  v4RecoveryPointSchema,
  v4TaskReferenceSchema,
  v4VmRecoveryPointSchema,
  v4VmSchema,
  v4VolumeGroupSchema,
} from './schemas.ts';
import { type TaskWaitOptions, createdEntityId, pathSegment, waitForV4Task } from './tasks.ts';
import type { ChangedRegionsRequest, ClusterInfo, DiskExport, DiskRecoveryPoint, ExportDiskRequest, PreparedExport, RecoveryPoint, Vm, VmDisk, CreateRecoveryPointRequest } from './types.ts';
import type { BackendDeps } from './v3.ts';

/** API revision per v4 namespace: v4.0 is the first GA revision (pc.2024.3), served by every v4-capable PC. */
export const v4Paths = {
  vms: '/api/vmm/v4.0/ahv/config/vms',
  categories: '/api/prism/v4.0/config/categories',
  clusters: '/api/clustermgmt/v4.0/config/clusters',
  recoveryPoints: '/api/dataprotection/v4.0/config/recovery-points',
  recoveryPointContent: '/api/dataprotection/v4.0/content/recovery-points',
  volumeGroups: '/api/volumes/v4.0/config/volume-groups',
  iscsiClients: '/api/volumes/v4.0/config/iscsi-clients',
} as const;

/** The v4 maximum page size. */
const v4PageLimit = 100;
const iscsiPort = 3260;

export class V4Backend {
  private readonly http: PrismHttp;
  private readonly log: Logger;
  private readonly taskWait: TaskWaitOptions;
  private clusterNames: Map<string, string> | undefined;

  constructor(deps: BackendDeps) {
    this.http = deps.http;
    this.log = deps.log;
    this.taskWait = deps.taskWait;
  }

  async clusters(signal?: AbortSignal): Promise<ClusterInfo[]> {
    const clusters = await this.listAll(v4Paths.clusters, v4ClusterSchema, 'list clusters', signal);
    const infos = clusters.map((c) => {
      const isPrismCentral = c.config?.clusterFunction?.includes('PRISM_CENTRAL') ?? false;
      const nos = c.config?.clusterSoftwareMap?.find((s) => s.softwareType === (isPrismCentral ? 'PRISM_CENTRAL' : 'NOS'));
      return {
        uuid: c.extId,
        name: c.name ?? c.extId,
        isPrismCentral,
        version: nos?.version ?? c.config?.buildInfo?.version ?? undefined,
        dataServicesIp: c.network?.externalDataServiceIp?.ipv4?.value ?? c.network?.externalDataServiceIp?.ipv6?.value ?? undefined,
      };
    });
    this.clusterNames = new Map(infos.map((c) => [c.uuid, c.name]));
    return infos;
  }

  async listVms(options: { name?: string; signal?: AbortSignal } = {}): Promise<Vm[]> {
    const filter = options.name === undefined ? undefined : `name eq '${odataString(options.name)}'`;
    const raw = await this.listAll(v4Paths.vms, v4VmSchema, 'list VMs', options.signal, filter);
    const convert = await this.vmConverter(raw, options.signal);
    const vms = raw.map(convert);
    return options.name === undefined ? vms : vms.filter((vm) => vm.name === options.name);
  }

  async getVm(uuid: string, signal?: AbortSignal): Promise<Vm> {
    const res = await this.http.request({
      method: 'GET',
      path: `${v4Paths.vms}/${pathSegment(uuid)}`,
      schema: v4Envelope(v4VmSchema),
      retrySafe: true,
      signal,
      what: `get VM ${uuid}`,
    });
    const convert = await this.vmConverter([res.data.data], signal);
    return convert(res.data.data);
  }

  async createRecoveryPoint(request: CreateRecoveryPointRequest): Promise<RecoveryPoint> {
    const { signal } = request;
    const what = `create recovery point "${request.name}" of VM ${request.vm.name}`;
    const body = v4RecoveryPointCreateSchema.parse({
      name: request.name,
      recoveryPointType: request.consistency,
      ...(request.expiresAt ? { expirationTime: request.expiresAt.toISOString() } : {}),
      vmRecoveryPoints: [
        {
          vmExtId: request.vm.uuid,
          // COPY_BACKUP leaves the guest's own VSS backup history (e.g. SQL log chains) untouched.
          ...(request.consistency === 'APPLICATION_CONSISTENT'
            ? { applicationConsistentProperties: { $objectType: 'dataprotection.v4.common.VssProperties', backupType: 'COPY_BACKUP', shouldStoreVssMetadata: false } }
            : {}),
        },
      ],
    });
    const res = await this.http.request({
      method: 'POST',
      path: v4Paths.recoveryPoints,
      body,
      headers: { 'NTNX-Request-Id': idempotencyUuid(request.requestId) },
      schema: v4Envelope(v4TaskReferenceSchema),
      // NTNX-Request-Id makes a repeat return the first call's task instead of creating a second point.
      retrySafe: true,
      signal,
      what,
    });
    const task = await waitForV4Task(this.http, res.data.data.extId, what, this.taskWait, signal);
    const id = createdEntityId(task, 'recoveryPointExtId', 'dataprotection:config:recovery-point', what);
    const point = await this.getRecoveryPoint(id, signal);
    if (!point) throw new AppError(ErrorCode.BadResponse, `${what}: recovery point ${id} vanished right after creation`, { retryable: true });
    if (point.consistency !== request.consistency) {
      this.log.warn({ vm: request.vm.name, requested: request.consistency, produced: point.consistency }, 'Prism produced a different consistency');
    }
    return point;
  }

  async getRecoveryPoint(id: string, signal?: AbortSignal): Promise<RecoveryPoint | undefined> {
    const found = await this.fetchRecoveryPoint(id, signal);
    return found ? this.toRecoveryPoint(found.point, signal) : undefined;
  }

  async listRecoveryPoints(options: { vmUuid: string; signal?: AbortSignal }): Promise<RecoveryPoint[]> {
    // No OData filter on vmRecoveryPoints/vmExtId is documented for dataprotection v4.0: page through all and pick.
    const raw = await this.listAll(v4Paths.recoveryPoints, v4RecoveryPointSchema, `list recovery points of VM ${options.vmUuid}`, options.signal);
    const mine = raw.filter((p) => p.vmRecoveryPoints?.some((v) => v.vmExtId === options.vmUuid));
    return Promise.all(mine.map((p) => this.toRecoveryPoint(p, options.signal)));
  }

  async deleteRecoveryPoint(id: string, signal?: AbortSignal): Promise<void> {
    const what = `delete recovery point ${id}`;
    await this.deleteWithEtag(`${v4Paths.recoveryPoints}/${pathSegment(id)}`, what, signal);
  }

  async *changedRegions(request: ChangedRegionsRequest): AsyncIterable<Region> {
    const target = vmDiskReference(request.recoveryPoint, request.disk, 'disk');
    const reference = request.reference ? vmDiskReference(request.reference.recoveryPoint, request.reference.disk, 'reference disk') : undefined;
    const what = `changed regions of disk ${request.disk.diskUuid}`;
    const path =
      `${v4Paths.recoveryPointContent}/${pathSegment(target.recoveryPointExtId)}/vm-recovery-points/${pathSegment(target.vmRecoveryPointExtId)}` +
      `/disk-recovery-points/${pathSegment(target.diskRecoveryPointExtId)}/$actions/compute-changed-regions`;
    const start = request.offset ?? 0;
    const end = request.length === undefined ? undefined : start + request.length;
    let session = await this.discoverCluster(target, reference, request.signal);
    let position = start;
    for (let rediscovered = false; ; ) {
      const body = v4ChangedRegionsRequestSchema.parse({
        offset: position,
        ...(end !== undefined ? { length: end - position } : {}),
        ...(request.blockSize !== undefined ? { blockSizeByte: request.blockSize } : {}),
        ...(reference
          ? {
              referenceRecoveryPointExtId: reference.recoveryPointExtId,
              referenceVmRecoveryPointExtId: reference.vmRecoveryPointExtId,
              referenceDiskRecoveryPointExtId: reference.diskRecoveryPointExtId,
            }
          : {}),
      });
      let res;
      try {
        res = await this.http.request({
          method: 'POST',
          baseUrl: session.baseUrl,
          path,
          body,
          // The cluster trusts the JWT from discover-cluster, not the PC session.
          session: false,
          headers: { Cookie: `NTNX_IGW_SESSION=${session.jwt}` },
          schema: v4ListEnvelope(v4ChangedRegionSchema),
          retrySafe: true,
          signal: request.signal,
          what,
        });
      } catch (err) {
        if (rediscovered || !isAppError(err) || err.code !== ErrorCode.Unauthenticated) throw err;
        // The JWT expired between pages: ask PC for a fresh one, once.
        session = await this.discoverCluster(target, reference, request.signal);
        rediscovered = true;
        continue;
      }
      const regions = (res.data.data ?? []).map((r) => ({ offset: r.offset, length: r.length, type: r.regionType }));
      regions.sort((a, b) => a.offset - b.offset);
      const clipped = clipRegions(regions, position, end ?? Number.MAX_SAFE_INTEGER);
      yield* clipped;
      const last = clipped.at(-1);
      // v4 has no next-offset field: a page continues where its last region ends; an empty page is the end.
      if (!last) return;
      const next = last.offset + last.length;
      if (end !== undefined && next >= end) return;
      position = next;
    }
  }

  async prepareExport(request: { clusterUuid: string; initiatorName: string; exportTag?: string; signal?: AbortSignal }): Promise<PreparedExport> {
    const token = randomUUID();
    const targetName = `sendense-${token.slice(0, 8)}`;
    const what = `create export volume group on cluster ${request.clusterUuid}`;
    const created = await this.http.request({
      method: 'POST',
      path: v4Paths.volumeGroups,
      body: { name: `${exportNamePrefix(request.exportTag)}${token}`, clusterReference: request.clusterUuid, sharingStatus: 'SHARED', targetName },
      headers: { 'NTNX-Request-Id': token },
      schema: v4Envelope(v4TaskReferenceSchema),
      retrySafe: true,
      signal: request.signal,
      what,
    });
    const task = await waitForV4Task(this.http, created.data.data.extId, what, this.taskWait, request.signal);
    const volumeGroupId = createdEntityId(task, 'volumeGroupExtId', 'volumes:config:volume-group', what);
    // Attached while still empty (Prism allows it; the LUN appears when the disk is added), so that an export of a
    // prepared group only adds the disk.
    try {
      await this.runTask(
        'POST',
        `${v4Paths.volumeGroups}/${pathSegment(volumeGroupId)}/$actions/attach-iscsi-client`,
        { iscsiInitiatorName: request.initiatorName },
        `${what}: attach iSCSI client ${request.initiatorName}`,
        { signal: request.signal },
      );
    } catch (err) {
      await this.discardVolumeGroup(volumeGroupId);
      throw err;
    }
    return { volumeGroupId, clusterUuid: request.clusterUuid, targetName, initiatorName: request.initiatorName };
  }

  async exportDisk(request: ExportDiskRequest): Promise<DiskExport> {
    const { signal, disk, recoveryPoint, prepared } = request;
    const what = `export disk ${disk.diskUuid} of recovery point ${recoveryPoint.id}`;
    // A prepared volume group is ours from here on: deleted if the export cannot even start.
    const source = async () => {
      if (!disk.diskRecoveryPointId) {
        throw new AppError(ErrorCode.InvalidInput, `${what}: the disk has no v4 disk recovery point id`, { hint: 'pass a disk of a v4 recovery point' });
      }
      return { diskRecoveryPointId: disk.diskRecoveryPointId, cluster: await this.exportCluster(recoveryPoint, what, signal) };
    };
    const { diskRecoveryPointId, cluster } = await source().catch(async (err: unknown) => {
      if (prepared) await this.discardVolumeGroup(prepared.volumeGroupId);
      throw err;
    });
    let volumeGroup = prepared;
    if (volumeGroup && (volumeGroup.clusterUuid !== cluster.uuid || volumeGroup.initiatorName !== request.initiatorName)) {
      // Prepared on the VM's cluster, but the recovery point lies elsewhere (the LUN must come from its cluster), or
      // for another initiator.
      await this.discardVolumeGroup(volumeGroup.volumeGroupId);
      volumeGroup = undefined;
    }
    volumeGroup ??= await this.prepareExport({
      clusterUuid: cluster.uuid,
      initiatorName: request.initiatorName,
      ...(request.exportTag ? { exportTag: request.exportTag } : {}),
      ...(signal ? { signal } : {}),
    });
    const { volumeGroupId: vgId, targetName } = volumeGroup;
    const vgPath = `${v4Paths.volumeGroups}/${pathSegment(vgId)}`;
    // prepareExport attached the initiator.
    let mayBeAttached = true;
    let iscsiClientId: string | undefined;
    const release = async (releaseSignal?: AbortSignal): Promise<void> => {
      if (mayBeAttached) {
        // Prism refuses to delete a volume group that still has a client attached.
        iscsiClientId ??= (await this.findIscsiClient(request.initiatorName, `release volume group ${vgId}`, releaseSignal))?.extId ?? undefined;
        if (iscsiClientId) {
          await this.runTask('POST', `${vgPath}/$actions/detach-iscsi-client`, { extId: iscsiClientId }, `release volume group ${vgId}: detach`, {
            signal: releaseSignal,
            goneOk: true,
          });
        }
      }
      await this.deleteWithEtag(vgPath, `release volume group ${vgId}: delete`, releaseSignal);
      mayBeAttached = false;
    };
    try {
      await this.runTask(
        'POST',
        `${vgPath}/disks`,
        { diskDataSourceReference: { entityType: 'DISK_RECOVERY_POINT', extId: diskRecoveryPointId } },
        `${what}: add disk`,
        { signal },
      );
      const [vg, client] = await Promise.all([
        this.http.request({ method: 'GET', path: vgPath, schema: v4Envelope(v4VolumeGroupSchema), retrySafe: true, signal, what: `${what}: read volume group` }),
        this.findIscsiClient(request.initiatorName, what, signal),
      ]);
      const name = vg.data.data.targetName ?? targetName;
      iscsiClientId = client?.extId ?? undefined;
      // The client's targets include this volume group's, named after its targetName.
      const iqn = client?.attachedTargets?.map((t) => t.iscsiTargetName).find((t): t is string => !!t && t.includes(name));
      if (!iqn) {
        throw new AppError(ErrorCode.BadResponse, `${what}: Prism lists no iSCSI target ${name} for initiator ${request.initiatorName}`, {
          hint: 'check the volume group attachment in Prism',
        });
      }
      return { kind: 'iscsi', url: `iscsi://${hostForUrl(cluster.dataServicesIp)}:${iscsiPort}/${iqn}/1`, release };
    } catch (err) {
      await release().catch((cleanupErr: unknown) =>
        this.log.warn({ vg: vgId, err: cleanupErr instanceof Error ? cleanupErr.message : String(cleanupErr) }, 'could not remove the export volume group'),
      );
      throw err;
    }
  }

  async releaseExportVolumeGroups(exportTag: string, signal?: AbortSignal): Promise<string[]> {
    const prefix = exportNamePrefix(exportTag);
    const what = `release export volume groups ${prefix}*`;
    const groups = (await this.listAll(v4Paths.volumeGroups, v4VolumeGroupSchema, what, signal)).filter((vg) => vg.extId && vg.name?.startsWith(prefix));
    const released: string[] = [];
    for (const vg of groups) {
      const vgId = vg.extId ?? '';
      await this.deleteVolumeGroup(vgId, what, signal);
      released.push(vgId);
    }
    return released;
  }

  /** Detaches whatever iSCSI clients a volume group lists (Prism refuses to delete it otherwise), then deletes it. */
  private async deleteVolumeGroup(vgId: string, what: string, signal?: AbortSignal): Promise<void> {
    const vgPath = `${v4Paths.volumeGroups}/${pathSegment(vgId)}`;
    const attachments = await this.listAll(`${vgPath}/iscsi-client-attachments`, v4IscsiAttachmentSchema, `${what}: attachments of ${vgId}`, signal);
    for (const attachment of attachments) {
      if (!attachment.extId) continue;
      await this.runTask('POST', `${vgPath}/$actions/detach-iscsi-client`, { extId: attachment.extId }, `${what}: detach from ${vgId}`, { signal, goneOk: true });
    }
    await this.deleteWithEtag(vgPath, `${what}: delete ${vgId}`, signal);
  }

  /** The cluster holding the recovery point, where its disks can be exported, with its iSCSI data services IP. */
  private async exportCluster(recoveryPoint: RecoveryPoint, what: string, signal?: AbortSignal): Promise<ClusterInfo & { dataServicesIp: string }> {
    const clusters = await this.clusters(signal);
    const cluster = clusters.find((c) => c.uuid === recoveryPoint.clusterUuid) ?? (clusters.filter((c) => !c.isPrismCentral).length === 1 ? clusters.find((c) => !c.isPrismCentral) : undefined);
    if (!cluster) {
      throw new AppError(ErrorCode.BadResponse, `${what}: cannot tell which cluster holds the recovery point`, { hint: 'the recovery point has no locationReferences' });
    }
    if (!cluster.dataServicesIp) {
      throw new AppError(ErrorCode.Unsupported, `${what}: cluster ${cluster.name} has no iSCSI data services IP`, {
        hint: 'set the cluster data services IP in Prism (Cluster Details > iSCSI Data Services IP)',
      });
    }
    return { ...cluster, dataServicesIp: cluster.dataServicesIp };
  }

  /** Deletes a volume group no disk was added to; a failure is only logged (its name lets releaseExportVolumeGroups find it). */
  private async discardVolumeGroup(vgId: string): Promise<void> {
    await this.deleteVolumeGroup(vgId, `discard volume group ${vgId}`).catch((err: unknown) =>
      this.log.warn({ vg: vgId, err: err instanceof Error ? err.message : String(err) }, 'could not remove the export volume group'),
    );
  }

  private async findIscsiClient(initiatorName: string, what: string, signal?: AbortSignal) {
    const clients = await this.listAll(v4Paths.iscsiClients, v4IscsiClientSchema, `${what}: find iSCSI client`, signal, `iscsiInitiatorName eq '${odataString(initiatorName)}'`);
    return clients.find((c) => c.iscsiInitiatorName === initiatorName && c.extId);
  }

  /**
   * A v4 write answered by a task reference, then awaited. Its fresh NTNX-Request-Id makes resending it safe.
   * With `goneOk`, a 404 (the entity is already gone) counts as done.
   */
  private async runTask(
    method: 'POST' | 'DELETE',
    path: string,
    body: unknown,
    what: string,
    options: { signal?: AbortSignal; goneOk?: boolean; headers?: Record<string, string> } = {},
  ): Promise<void> {
    const req = {
      method,
      path,
      body,
      headers: { 'NTNX-Request-Id': randomUUID(), ...options.headers },
      schema: v4Envelope(v4TaskReferenceSchema),
      retrySafe: true,
      signal: options.signal,
      what,
    };
    const res = options.goneOk ? await this.http.requestIfExists(req) : await this.http.request(req);
    if (res) await waitForV4Task(this.http, res.data.data.extId, what, this.taskWait, options.signal);
  }

  /** v4 DELETE needs the entity's current ETag in If-Match: GET first; "already gone" counts as deleted. */
  private async deleteWithEtag(path: string, what: string, signal?: AbortSignal): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const current = await this.http.requestIfExists({ method: 'GET', path, schema: ignoredBodySchema, retrySafe: true, signal, what });
      if (!current) return;
      const etag = current.headers.etag;
      try {
        await this.runTask('DELETE', path, undefined, what, { signal, goneOk: true, headers: etag ? { 'If-Match': etag } : {} });
        return;
      } catch (err) {
        // 412: the entity changed between GET and DELETE; fetch the new ETag once.
        if (attempt < 2 && isAppError(err) && err.code === ErrorCode.Conflict) continue;
        throw err;
      }
    }
  }

  private async discoverCluster(
    target: ReturnType<typeof vmDiskReference>,
    reference: ReturnType<typeof vmDiskReference> | undefined,
    signal?: AbortSignal,
  ): Promise<{ baseUrl: string; jwt: string }> {
    const body = v4DiscoverClusterRequestSchema.parse({
      operation: 'COMPUTE_CHANGED_REGIONS',
      spec: {
        $objectType: 'dataprotection.v4.content.ComputeChangedRegionsClusterDiscoverSpec',
        diskRecoveryPoint: target,
        ...(reference ? { referenceDiskRecoveryPoint: reference } : {}),
      },
    });
    const res = await this.http.request({
      method: 'POST',
      path: `${v4Paths.recoveryPoints}/${pathSegment(target.recoveryPointExtId)}/$actions/discover-cluster`,
      body,
      schema: v4Envelope(v4ClusterInfoSchema),
      // A lookup with no side effect.
      retrySafe: true,
      signal,
      what: `discover the cluster of recovery point ${target.recoveryPointExtId}`,
    });
    const ip = res.data.data.clusterIp.ipv4?.value ?? res.data.data.clusterIp.ipv6?.value;
    if (!ip) throw new AppError(ErrorCode.BadResponse, 'discover-cluster returned no cluster IP');
    // Same port and CA as the PC endpoint (Prism serves 9440 on every cluster).
    const port = new URL(this.http.endpoint).port || '9440';
    return { baseUrl: `https://${hostForUrl(ip)}:${port}`, jwt: res.data.data.jwtToken };
  }

  private async fetchRecoveryPoint(id: string, signal?: AbortSignal): Promise<{ point: V4RecoveryPoint } | undefined> {
    const res = await this.http.requestIfExists({
      method: 'GET',
      path: `${v4Paths.recoveryPoints}/${pathSegment(id)}`,
      schema: v4Envelope(v4RecoveryPointSchema),
      retrySafe: true,
      signal,
      what: `get recovery point ${id}`,
    });
    return res ? { point: res.data.data } : undefined;
  }

  private async toRecoveryPoint(raw: V4RecoveryPoint, signal?: AbortSignal): Promise<RecoveryPoint> {
    let vmPoint = raw.vmRecoveryPoints?.[0];
    if (!vmPoint) throw new AppError(ErrorCode.BadResponse, `recovery point ${raw.extId} holds no VM recovery point`);
    if (!vmPoint.diskRecoveryPoints) {
      // Some revisions list VM recovery points without their disks: read the VM recovery point itself.
      const res = await this.http.request({
        method: 'GET',
        path: `${v4Paths.recoveryPoints}/${pathSegment(raw.extId)}/vm-recovery-points/${pathSegment(vmPoint.extId)}`,
        schema: v4Envelope(v4VmRecoveryPointSchema),
        retrySafe: true,
        signal,
        what: `get VM recovery point ${vmPoint.extId}`,
      });
      vmPoint = res.data.data;
    }
    const consistency = vmPoint.recoveryPointType ?? raw.recoveryPointType;
    if (!consistency) throw new AppError(ErrorCode.BadResponse, `recovery point ${raw.extId}: Prism reported no recoveryPointType`);
    return {
      id: raw.extId,
      generation: 'v4',
      name: raw.name ?? '',
      vmUuid: vmPoint.vmExtId ?? '',
      vmRecoveryPointId: vmPoint.extId,
      clusterUuid: raw.locationReferences?.[0]?.locationExtId ?? undefined,
      consistency,
      createdAt: raw.creationTime ?? undefined,
      disks: (vmPoint.diskRecoveryPoints ?? []).map((d) => ({ diskUuid: d.diskExtId ?? '', diskRecoveryPointId: d.diskRecoveryPointExtId })),
    };
  }

  /** Converts v4 VMs, with the category names and cluster names they reference looked up once. */
  private async vmConverter(raw: V4Vm[], signal?: AbortSignal): Promise<(vm: V4Vm) => Vm> {
    const needsCategories = raw.some((vm) => (vm.categories?.length ?? 0) > 0);
    const categories = needsCategories ? await this.categoryNames(signal) : new Map<string, [string, string]>();
    if (!this.clusterNames) await this.clusters(signal);
    const clusterNames = this.clusterNames ?? new Map<string, string>();
    return (vm) => toVm(vm, categories, clusterNames);
  }

  private async categoryNames(signal?: AbortSignal): Promise<Map<string, [string, string]>> {
    const all = await this.listAll(v4Paths.categories, v4CategorySchema, 'list categories', signal);
    return new Map(all.map((c) => [c.extId, [c.key, c.value]]));
  }

  /** Pages a v4 list ($page from 0, $limit 100) until totalAvailableResults, or a short page when it is absent. */
  private async listAll<T extends z.ZodType>(path: string, item: T, what: string, signal?: AbortSignal, filter?: string): Promise<z.infer<T>[]> {
    const all: z.infer<T>[] = [];
    for (let page = 0; ; page++) {
      const res = await this.http.request({
        method: 'GET',
        path,
        query: { $page: page, $limit: v4PageLimit, $filter: filter },
        schema: v4ListEnvelope(item),
        retrySafe: true,
        signal,
        what,
      });
      const items = res.data.data ?? [];
      all.push(...items);
      const total = res.data.metadata?.totalAvailableResults;
      if (items.length === 0 || (total != null ? all.length >= total : items.length < v4PageLimit)) return all;
    }
  }
}

function vmDiskReference(point: RecoveryPoint, disk: DiskRecoveryPoint, role: string) {
  if (!point.vmRecoveryPointId || !disk.diskRecoveryPointId) {
    throw new AppError(ErrorCode.InvalidInput, `${role} ${disk.diskUuid}: not a v4 disk recovery point`, {
      hint: 'v3 recovery points go through the v3 client',
    });
  }
  return {
    $objectType: 'dataprotection.v4.content.VmDiskRecoveryPointReference' as const,
    recoveryPointExtId: point.id,
    vmRecoveryPointExtId: point.vmRecoveryPointId,
    diskRecoveryPointExtId: disk.diskRecoveryPointId,
  };
}

/** OData string literal: a single quote is doubled. */
function odataString(value: string): string {
  return value.replaceAll("'", "''");
}

function hostForUrl(ip: string): string {
  return ip.includes(':') ? `[${ip}]` : ip;
}

export function toVm(raw: V4Vm, categories: Map<string, [string, string]>, clusterNames: Map<string, string>): Vm {
  const disks: Omit<VmDisk, 'index'>[] = [];
  for (const d of raw.disks ?? []) {
    const backing = d.backingInfo;
    // Only VmDisk backings are the VM's own disks; ADSFVolumeGroupReference ones are attached volume groups.
    // CD-ROMs live in `cdRoms`, not in `disks`.
    const isVmDisk = backing?.$objectType ? backing.$objectType === 'vmm.v4.ahv.config.VmDisk' : !backing?.volumeGroupExtId;
    if (!isVmDisk || !d.extId || !d.diskAddress) continue;
    const containerId = backing?.storageContainer?.extId;
    disks.push({
      uuid: d.extId,
      busType: d.diskAddress.busType,
      deviceIndex: d.diskAddress.index,
      sizeBytes: backing?.diskSizeBytes ?? 0,
      ...(containerId ? { container: { uuid: containerId } } : {}),
    });
  }
  const clusterUuid = raw.cluster?.extId ?? '';
  const clusterName = clusterNames.get(clusterUuid);
  const tools = raw.guestTools;
  const categoryMap: Record<string, string> = {};
  for (const ref of raw.categories ?? []) {
    const kv = ref.extId ? categories.get(ref.extId) : undefined;
    if (kv) categoryMap[kv[0]] = kv[1];
  }
  return {
    uuid: raw.extId,
    name: raw.name ?? raw.extId,
    cluster: { uuid: clusterUuid, ...(clusterName ? { name: clusterName } : {}) },
    powerState: raw.powerState ?? 'UNKNOWN',
    numSockets: raw.numSockets ?? undefined,
    numVcpusPerSocket: raw.numCoresPerSocket ?? undefined,
    memorySizeMib: raw.memorySizeBytes == null ? undefined : Math.round(raw.memorySizeBytes / (1024 * 1024)),
    ngt: {
      installed: tools?.isInstalled ?? false,
      enabled: tools?.isEnabled ?? false,
      reachable: tools?.isReachable ?? false,
      vssSnapshotCapable: tools?.isVssSnapshotCapable ?? tools?.capabilities?.includes('VSS_SNAPSHOT') ?? false,
      ...(tools?.version ? { version: tools.version } : {}),
    },
    categories: categoryMap,
    disks: indexDisks(disks),
    nics: (raw.nics ?? []).map((n) => ({
      uuid: n.extId ?? undefined,
      macAddress: n.backingInfo?.macAddress ?? undefined,
      subnet: n.networkInfo?.subnet?.extId ? { uuid: n.networkInfo.subnet.extId } : undefined,
      ipAddresses: [
        ...(n.networkInfo?.ipv4Config?.ipAddress ? [n.networkInfo.ipv4Config.ipAddress.value] : []),
        ...(n.networkInfo?.ipv4Info?.learnedIpAddresses ?? []).map((a) => a.value),
      ],
    })),
  };
}

/** Export volume groups are named `sendense-export-[<tag>-]<request id>`; a tag names the owner (e.g. a run's uid). */
function exportNamePrefix(exportTag: string | undefined): string {
  return exportTag ? `sendense-export-${exportTag}-` : 'sendense-export-';
}
