/**
 * Prism v4 (pc.2024.3): vmm VMs, clustermgmt clusters, dataprotection recovery points (+ discover-cluster and
 * compute-changed-regions), prism tasks and categories, volumes volume groups with iSCSI export. Field names,
 * `$objectType` strings and enums follow the official Go SDK (nutanix/ntnx-api-golang-clients).
 */
import { createHash, randomUUID } from 'node:crypto';
import { z } from 'zod';
import { changedRegions, type BlockMap } from './disk.ts';
import { NUTANIX_IQN_PREFIX } from './iscsi.ts';
import { v4Error, type Ctx, type Reply, type Route, type Sim } from './server.ts';
import { startSnapshot } from './snapshots.ts';
import { Consistency, disksInIndexOrder, type SimCluster, type SimVm, type Snapshot, type Task, type VolumeGroup } from './state.ts';

const reserved = { $fv: 'v4.r0' };
export const taskIdPrefix = 'ZXJnb24=:';

export function taskExtId(uuid: string): string {
  return `${taskIdPrefix}${uuid}`;
}

function etagOf(...parts: Array<string | number>): string {
  return `"${createHash('sha256').update(parts.join('/')).digest('base64url').slice(0, 24)}"`;
}

function ipAddress(value: string): Record<string, unknown> {
  return { $objectType: 'common.v1.config.IPAddress', ipv4: { $objectType: 'common.v1.config.IPv4Address', value, prefixLength: 32 } };
}

interface Metadata {
  total?: number;
  links?: Array<{ href: string; rel: string }>;
  paginated?: boolean;
}

function envelope(objectType: string, data: unknown, meta: Metadata = {}): Record<string, unknown> {
  const metadata: Record<string, unknown> = {
    $objectType: 'common.v1.response.ApiResponseMetadata',
    flags: [
      { $objectType: 'common.v1.config.Flag', name: 'hasError', value: false },
      { $objectType: 'common.v1.config.Flag', name: 'isPaginated', value: meta.paginated ?? false },
    ],
  };
  if (meta.links) metadata.links = meta.links.map((l) => ({ $objectType: 'common.v1.response.ApiLink', ...l }));
  if (meta.total !== undefined) metadata.totalAvailableResults = meta.total;
  return { $objectType: objectType, $reserved: reserved, data, metadata };
}

function ok(objectType: string, data: unknown, headers?: Record<string, string>, meta?: Metadata, status = 200): Reply {
  return { status, body: envelope(objectType, data, meta), headers };
}

function taskReply(ns: string, task: Task): Reply {
  return ok(`${ns}.v4.config.TaskReferenceApiResponse`, { $objectType: 'prism.v4.config.TaskReference', $reserved: reserved, extId: taskExtId(task.uuid) }, undefined, undefined, 202);
}

function parse<T extends z.ZodType>(ns: string, schema: T, body: unknown): { ok: true; value: z.infer<T> } | { ok: false; reply: Reply } {
  const parsed = schema.safeParse(body ?? {});
  if (parsed.success) return { ok: true, value: parsed.data };
  const message = parsed.error.issues.map((i) => `${i.path.join('.') || '<body>'}: ${i.message}`).join('; ');
  return { ok: false, reply: v4Error(ns, 400, `${ns.toUpperCase()}-40000`, 'SCHEMA_VALIDATION_ERROR', `Request body is invalid: ${message}`) };
}

// ---- $filter / paging ---------------------------------------------------------------------------------------

type Predicate = (fields: Record<string, string | undefined>) => boolean;

/** OData subset: `f eq 'v'`, `f ne 'v'`, `startswith(f,'v')`, `contains(f,'v')`, joined by ` and `. */
function parseFilter(filter: string, allowed: string[]): Predicate | string {
  const predicates: Predicate[] = [];
  for (const term of filter.split(/\s+and\s+/i)) {
    const cmp = /^\s*([A-Za-z/]+)\s+(eq|ne)\s+'((?:[^']|'')*)'\s*$/.exec(term);
    const fn = /^\s*(startswith|contains)\(\s*([A-Za-z/]+)\s*,\s*'((?:[^']|'')*)'\s*\)\s*$/.exec(term);
    if (cmp) {
      const [, field, op, raw] = cmp as unknown as [string, string, string, string];
      if (!allowed.includes(field)) return `unsupported $filter attribute '${field}'`;
      const value = raw.replace(/''/g, "'");
      predicates.push((f) => (op === 'eq' ? f[field] === value : f[field] !== value));
    } else if (fn) {
      const [, name, field, raw] = fn as unknown as [string, string, string, string];
      if (!allowed.includes(field)) return `unsupported $filter attribute '${field}'`;
      const value = raw.replace(/''/g, "'");
      predicates.push((f) => (name === 'startswith' ? (f[field] ?? '').startsWith(value) : (f[field] ?? '').includes(value)));
    } else {
      return `unsupported $filter expression '${term}'`;
    }
  }
  return (fields) => predicates.every((p) => p(fields));
}

function list<T>(
  ctx: Ctx,
  ns: string,
  objectType: string,
  items: T[],
  fields: (item: T) => Record<string, string | undefined>,
  render: (item: T) => unknown,
): Reply {
  const pageText = ctx.query.get('$page') ?? '0';
  const limitText = ctx.query.get('$limit') ?? '50';
  const pageNo = Number(pageText);
  const limit = Number(limitText);
  if (!Number.isInteger(pageNo) || pageNo < 0) return v4Error(ns, 400, `${ns.toUpperCase()}-40001`, 'INVALID_ARGUMENT', `$page must be a non-negative integer, got '${pageText}'`);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) return v4Error(ns, 400, `${ns.toUpperCase()}-40001`, 'INVALID_ARGUMENT', `$limit must be an integer between 1 and 100, got '${limitText}'`);
  let selected = items;
  const filter = ctx.query.get('$filter');
  if (filter) {
    const predicate = parseFilter(filter, Object.keys(items[0] === undefined ? {} : fields(items[0])).concat(['name', 'extId']));
    if (typeof predicate === 'string') return v4Error(ns, 400, `${ns.toUpperCase()}-40002`, 'INVALID_FILTER', predicate);
    selected = items.filter((item) => predicate(fields(item)));
  }
  const slice = selected.slice(pageNo * limit, pageNo * limit + limit);
  const href = (p: number): string => {
    const q = new URLSearchParams(ctx.query);
    q.set('$page', String(p));
    q.set('$limit', String(limit));
    return `https://${ctx.headers.host ?? 'localhost'}${ctx.path}?${q.toString()}`;
  };
  const lastPage = Math.max(0, Math.ceil(selected.length / limit) - 1);
  const links = [
    { href: href(pageNo), rel: 'self' },
    { href: href(0), rel: 'first' },
    ...(pageNo > 0 ? [{ href: href(pageNo - 1), rel: 'prev' }] : []),
    ...(pageNo < lastPage ? [{ href: href(pageNo + 1), rel: 'next' }] : []),
    { href: href(lastPage), rel: 'last' },
  ];
  return ok(objectType, slice.map(render), undefined, { total: selected.length, links, paginated: true });
}

// ---- renderers ----------------------------------------------------------------------------------------------

export function categoryExtId(key: string, value: string): string {
  const h = createHash('sha256').update(`category/${key}/${value}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

function guestTools(vm: SimVm): Record<string, unknown> {
  return {
    $objectType: 'vmm.v4.ahv.config.GuestTools',
    isInstalled: vm.ngt.installed,
    isEnabled: vm.ngt.enabled,
    isReachable: vm.ngt.reachable,
    isVssSnapshotCapable: vm.ngt.vssCapable,
    capabilities: vm.ngt.vssCapable ? ['VSS_SNAPSHOT'] : [],
    isIsoInserted: false,
    availableVersion: '4.1',
    ...(vm.ngt.installed ? { version: '4.1', guestOsVersion: 'linux:64:ubuntu-22.04' } : {}),
  };
}

function vmEtag(vm: SimVm): string {
  return etagOf('vm', vm.uuid, vm.specVersion);
}

function renderVm(vm: SimVm): Record<string, unknown> {
  const disks: Record<string, unknown>[] = disksInIndexOrder(vm).map((disk) => ({
    $objectType: 'vmm.v4.ahv.config.Disk',
    extId: disk.uuid,
    diskAddress: { $objectType: 'vmm.v4.ahv.config.DiskAddress', busType: disk.busType, index: disk.deviceIndex },
    $backingInfoItemDiscriminator: 'vmm.v4.ahv.config.VmDisk',
    backingInfo: {
      $objectType: 'vmm.v4.ahv.config.VmDisk',
      diskExtId: disk.uuid,
      diskSizeBytes: disk.sizeBytes,
      storageContainer: { $objectType: 'vmm.v4.ahv.config.VmDiskContainerReference', extId: disk.containerUuid },
      isMigrationInProgress: false,
    },
  }));
  if (vm.volumeGroupDevice) {
    disks.push({
      $objectType: 'vmm.v4.ahv.config.Disk',
      extId: vm.volumeGroupDevice.uuid,
      diskAddress: { $objectType: 'vmm.v4.ahv.config.DiskAddress', busType: 'SCSI', index: vm.volumeGroupDevice.deviceIndex },
      $backingInfoItemDiscriminator: 'vmm.v4.ahv.config.ADSFVolumeGroupReference',
      backingInfo: { $objectType: 'vmm.v4.ahv.config.ADSFVolumeGroupReference', volumeGroupExtId: vm.volumeGroupDevice.volumeGroupUuid },
    });
  }
  return {
    $objectType: 'vmm.v4.ahv.config.Vm',
    $reserved: { ...reserved, ETag: vmEtag(vm) },
    extId: vm.uuid,
    name: vm.name,
    description: `Simulated VM ${vm.index}`,
    createTime: vm.createdAt,
    updateTime: vm.createdAt,
    cluster: { $objectType: 'vmm.v4.ahv.config.ClusterReference', extId: vm.clusterUuid },
    powerState: vm.powerState,
    numSockets: 2,
    numCoresPerSocket: 1,
    numThreadsPerCore: 1,
    memorySizeBytes: 4096 * 1024 * 1024,
    machineType: 'PC',
    biosUuid: vm.biosUuid,
    generationUuid: vm.biosUuid,
    hardwareClockTimezone: 'UTC',
    categories: Object.entries(vm.categories).map(([k, v]) => ({ $objectType: 'vmm.v4.ahv.config.CategoryReference', extId: categoryExtId(k, v) })),
    disks,
    cdRoms: vm.cdrom
      ? [{ $objectType: 'vmm.v4.ahv.config.CdRom', extId: vm.cdrom.uuid, diskAddress: { $objectType: 'vmm.v4.ahv.config.CdRomAddress', busType: 'IDE', index: 0 }, isoType: 'OTHER' }]
      : [],
    nics: vm.nics.map((nic) => ({
      $objectType: 'vmm.v4.ahv.config.Nic',
      extId: nic.uuid,
      backingInfo: { $objectType: 'vmm.v4.ahv.config.EmulatedNic', macAddress: nic.mac, model: 'VIRTIO', isConnected: true, numQueues: 1 },
      networkInfo: {
        $objectType: 'vmm.v4.ahv.config.NicNetworkInfo',
        nicType: 'NORMAL_NIC',
        vlanMode: 'ACCESS',
        subnet: { $objectType: 'vmm.v4.ahv.config.SubnetReference', extId: nic.subnetUuid },
        ipv4Config: { $objectType: 'vmm.v4.ahv.config.Ipv4Config', shouldAssignIp: false, ipAddress: { $objectType: 'common.v1.config.IPv4Address', value: nic.ip, prefixLength: 32 } },
      },
    })),
    guestTools: guestTools(vm),
  };
}

function renderCluster(sim: Sim, cluster: SimCluster): Record<string, unknown> {
  const network: Record<string, unknown> = { $objectType: 'clustermgmt.v4.config.ClusterNetworkReference', externalAddress: ipAddress(sim.config.listenIp) };
  if (!cluster.isPrismCentral && sim.tgtd) network.externalDataServiceIp = ipAddress(sim.tgtd.ip);
  return {
    $objectType: 'clustermgmt.v4.config.Cluster',
    $reserved: reserved,
    extId: cluster.uuid,
    name: cluster.name,
    config: {
      $objectType: 'clustermgmt.v4.config.ClusterConfigReference',
      clusterFunction: [cluster.isPrismCentral ? 'PRISM_CENTRAL' : 'AOS'],
      buildInfo: {
        $objectType: 'clustermgmt.v4.config.BuildReference',
        buildType: 'release',
        version: cluster.isPrismCentral ? 'pc.2024.3.0.1' : cluster.version,
        fullVersion: `el8.5-release-fraser-${cluster.version}-stable-sim`,
        commitId: '1'.repeat(40),
        shortCommitId: '111111',
      },
      clusterSoftwareMap: [
        { $objectType: 'clustermgmt.v4.config.SoftwareMapReference', softwareType: cluster.isPrismCentral ? 'PRISM_CENTRAL' : 'NOS', version: cluster.isPrismCentral ? 'pc.2024.3.0.1' : cluster.version },
        { $objectType: 'clustermgmt.v4.config.SoftwareMapReference', softwareType: 'NCC', version: 'ncc-5.0.1' },
      ],
      hypervisorTypes: cluster.isPrismCentral ? [] : ['AHV'],
      isAvailable: true,
      redundancyFactor: 2,
      timezone: 'UTC',
      operationMode: 'NORMAL',
    },
    network,
    vmCount: sim.world.state.vms.filter((vm) => vm.clusterUuid === cluster.uuid).length,
  };
}

function rpType(snapshot: Snapshot): Consistency {
  return snapshot.vms.length > 0 && snapshot.vms.every((v) => v.type === Consistency.Application) ? Consistency.Application : Consistency.Crash;
}

function rpEtag(snapshot: Snapshot): string {
  return etagOf('rp', snapshot.uuid, snapshot.specVersion);
}

function renderVmRp(sim: Sim, snapshot: Snapshot, part: Snapshot['vms'][number]): Record<string, unknown> {
  const vm = sim.world.vmByUuid(part.vmUuid);
  return {
    $objectType: 'dataprotection.v4.config.VmRecoveryPoint',
    $reserved: reserved,
    extId: part.vmRecoveryPointUuid,
    vmExtId: part.vmUuid,
    name: snapshot.name,
    creationTime: snapshot.createdAt,
    ...(snapshot.expirationTime ? { expirationTime: snapshot.expirationTime } : {}),
    status: 'COMPLETE',
    recoveryPointType: part.type,
    consistencyGroupExtId: part.vmRecoveryPointUuid,
    locationAgnosticId: part.vmRecoveryPointUuid,
    hypervisorType: 'AHV',
    vmCategories: Object.entries(vm?.categories ?? {}).map(([k, v]) => `${k}/${v}`),
    diskRecoveryPoints: part.disks.map((d) => ({ $objectType: 'dataprotection.v4.common.DiskRecoveryPoint', diskExtId: d.diskUuid, diskRecoveryPointExtId: d.diskRecoveryPointUuid })),
  };
}

function renderRp(sim: Sim, snapshot: Snapshot): Record<string, unknown> {
  const cluster = sim.world.vmByUuid(snapshot.requestedVmUuids[0] ?? '')?.clusterUuid;
  return {
    $objectType: 'dataprotection.v4.config.RecoveryPoint',
    $reserved: { ...reserved, ETag: rpEtag(snapshot) },
    extId: snapshot.uuid,
    name: snapshot.name,
    creationTime: snapshot.createdAt,
    ...(snapshot.expirationTime ? { expirationTime: snapshot.expirationTime } : {}),
    status: 'COMPLETE',
    recoveryPointType: rpType(snapshot),
    locationAgnosticId: snapshot.uuid,
    locationReferences: cluster ? [{ $objectType: 'dataprotection.v4.config.LocationReference', locationExtId: cluster }] : [],
    ownerExtId: '00000000-0000-4000-8000-000000000002',
    vmRecoveryPoints: snapshot.vms.map((part) => renderVmRp(sim, snapshot, part)),
    volumeGroupRecoveryPoints: [],
  };
}

function renderTask(sim: Sim, task: Task): Record<string, unknown> {
  const out: Record<string, unknown> = {
    $objectType: 'prism.v4.config.Task',
    $reserved: reserved,
    extId: taskExtId(task.uuid),
    operation: task.operation,
    operationDescription: task.operation.replace(/([a-z])([A-Z])/g, '$1 $2'),
    status: task.status,
    progressPercentage: task.progress,
    createdTime: task.createdAt,
    lastUpdatedTime: task.updatedAt,
    entitiesAffected: task.entities.map((e) => ({ $objectType: 'prism.v4.config.EntityReference', extId: e.extId, rel: e.rel, ...(e.name ? { name: e.name } : {}) })),
    completionDetails: task.completionDetails.map((kv) => ({ $objectType: 'common.v1.config.KVPair', name: kv.name, value: kv.value })),
    clusterExtIds: task.clusterUuid ? [task.clusterUuid] : [],
    isCancelable: sim.tasks.isCancelable(task),
    isBackgroundTask: false,
    numberOfSubtasks: 0,
    numberOfEntitiesAffected: task.entities.length,
    ownedBy: { $objectType: 'prism.v4.config.OwnerReference', extId: '00000000-0000-4000-8000-000000000002', name: 'admin' },
    subSteps: [],
    subTasks: [],
    warnings: [],
  };
  if (task.startedAt) out.startedTime = task.startedAt;
  if (task.completedAt) out.completedTime = task.completedAt;
  if (task.error) {
    out.errorMessages = [{ $objectType: 'prism.v4.error.AppMessage', code: task.error.code, message: task.error.message, locale: 'en-US', severity: 'ERROR', errorGroup: 'TASK_FAILED', argumentsMap: {} }];
    out.legacyErrorMessage = task.error.message;
  } else {
    out.errorMessages = [];
  }
  return out;
}

function iqnOf(vg: VolumeGroup): string {
  return `${NUTANIX_IQN_PREFIX}${targetName(vg)}`;
}

function targetName(vg: VolumeGroup): string {
  return `${vg.name.toLowerCase().replace(/[^a-z0-9.-]/g, '-')}-${vg.uuid}`;
}

/** An initiator becomes an iSCSI client entity (volumes IscsiClient) on first attach; its extId is stable. */
export function iscsiClientExtId(initiatorName: string): string {
  const h = createHash('sha256').update(`iscsi-client/${initiatorName}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-9${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

function renderIscsiClient(sim: Sim, initiatorName: string): Record<string, unknown> {
  return {
    $objectType: 'volumes.v4.config.IscsiClient',
    $reserved: reserved,
    extId: iscsiClientExtId(initiatorName),
    iscsiInitiatorName: initiatorName,
    enabledAuthentications: 'NONE',
    clusterReference: sim.world.state.clusters.find((c) => !c.isPrismCentral)?.uuid,
    attachedTargets: sim.world.state.volumeGroups
      .filter((vg) => vg.initiators.includes(initiatorName))
      .map((vg) => ({ $objectType: 'volumes.v4.config.TargetParam', iscsiTargetName: iqnOf(vg), numVirtualTargets: 1 })),
  };
}

function vgEtag(vg: VolumeGroup): string {
  return etagOf('vg', vg.uuid, vg.specVersion);
}

function renderVg(sim: Sim, vg: VolumeGroup): Record<string, unknown> {
  return {
    $objectType: 'volumes.v4.config.VolumeGroup',
    $reserved: { ...reserved, ETag: vgEtag(vg) },
    extId: vg.uuid,
    name: vg.name,
    targetName: targetName(vg),
    targetPrefix: vg.name,
    sharingStatus: 'SHARED',
    usageType: 'BACKUP_TARGET',
    isHidden: false,
    protocol: 'ISCSI',
    clusterReference: sim.world.state.clusters.find((c) => !c.isPrismCentral)?.uuid,
    createdBy: 'admin',
  };
}

function renderVgDisk(vg: VolumeGroup, disk: VolumeGroup['disks'][number]): Record<string, unknown> {
  return {
    $objectType: 'volumes.v4.config.VolumeDisk',
    $reserved: reserved,
    extId: disk.uuid,
    index: disk.index,
    diskSizeBytes: disk.sizeBytes,
    diskDataSourceReference: { $objectType: 'common.v1.config.EntityReference', entityType: 'DISK_RECOVERY_POINT', extId: disk.diskRecoveryPointUuid },
    description: `disk ${disk.index} of volume group ${vg.name}`,
  };
}

// ---- request schemas ----------------------------------------------------------------------------------------

const rpCreateSchema = z.looseObject({
  name: z.string().optional(),
  expirationTime: z.string().optional(),
  recoveryPointType: z.enum([Consistency.Crash, Consistency.Application]).optional(),
  vmRecoveryPoints: z.array(z.looseObject({ vmExtId: z.string() })).min(1),
});

const blockSizes = [32768, 65536, 131072, 262144];

const crtSchema = z.looseObject({
  offset: z.number().int().min(0).optional(),
  length: z.number().int().min(1).optional(),
  blockSizeByte: z.number().int().optional(),
  referenceRecoveryPointExtId: z.string().optional(),
  referenceVmRecoveryPointExtId: z.string().optional(),
  referenceDiskRecoveryPointExtId: z.string().optional(),
});

const discoverSchema = z.looseObject({
  operation: z.enum(['COMPUTE_CHANGED_REGIONS', 'GET_VSS_METADATA']),
  spec: z.unknown().optional(),
});

const vgCreateSchema = z.looseObject({ name: z.string().min(1), targetPrefix: z.string().optional(), sharingStatus: z.string().optional() });
const vgDiskSchema = z.looseObject({
  index: z.number().int().optional(),
  diskDataSourceReference: z.looseObject({ entityType: z.literal('DISK_RECOVERY_POINT'), extId: z.string() }),
});
const iscsiClientSchema = z.looseObject({ iscsiInitiatorName: z.string().min(1).optional(), extId: z.string().optional() });

/** Makes tgtd export exactly the VG's disks to its attached initiators (no initiator or no disk: no target). */
export async function exportVolumeGroup(sim: Sim, vg: VolumeGroup): Promise<void> {
  const tgtd = sim.tgtd;
  if (!tgtd) throw new Error('iSCSI is disabled in this simulator (--iscsi off)');
  if (vg.initiators.length === 0 || vg.disks.length === 0) {
    await tgtd.remove(iqnOf(vg));
    return;
  }
  const disks = [...vg.disks].sort((a, b) => a.index - b.index);
  await tgtd.export(iqnOf(vg), disks.map((d) => d.path), sim.config.iscsiAcl === 'any' ? ['ALL'] : vg.initiators);
}

// ---- routes -------------------------------------------------------------------------------------------------

export function v4Routes(sim: Sim): Route[] {
  const world = sim.world;
  const vmm = '/api/vmm/v4.0/ahv/config';
  const dp = '/api/dataprotection/v4.0';
  const vol = '/api/volumes/v4.0/config/volume-groups';

  const completeRp = (extId: string): Snapshot | undefined => world.state.snapshots.find((s) => s.uuid === extId && s.api === 'v4' && s.state === 'COMPLETE');
  const rpNotFound = (extId: string): Reply =>
    v4Error('dataprotection', 404, 'DATAPROTECTION-30100', 'RECOVERY_POINT_NOT_FOUND', `Recovery point with extId '${extId}' is not found.`, { extId });
  const vmNotFound = (extId: string): Reply =>
    v4Error('vmm', 404, 'VMM-30100', 'VM_NOT_FOUND', `Failed to perform the operation on the VM with UUID '${extId}', because it is not found.`, { vm_uuid: extId });
  const vgNotFound = (extId: string): Reply => v4Error('volumes', 404, 'VOLUMES-30100', 'VOLUME_GROUP_NOT_FOUND', `Volume group with extId '${extId}' is not found.`, { extId });

  /** NTNX-Request-Id: a replayed request returns the task of the first one and creates nothing. */
  const idempotent = (ctx: Ctx, ns: string, create: () => Task | Reply): Reply => {
    const requestId = ctx.headers['ntnx-request-id'];
    const key = typeof requestId === 'string' && requestId !== '' ? `${ctx.method} ${ctx.path} ${requestId}` : undefined;
    const seen = key ? world.state.requestIds[key] : undefined;
    const previous = seen ? sim.tasks.get(seen) : undefined;
    if (previous) return taskReply(ns, previous);
    const result = create();
    if (!('uuid' in result)) return result;
    if (key) {
      world.state.requestIds[key] = result.uuid;
      world.changed();
    }
    return taskReply(ns, result);
  };

  /** If-Match on DELETE: 428 PLAT-10004 when missing, 412 PLAT-10005 when stale. */
  const checkEtag = (ctx: Ctx, ns: string, current: string): Reply | undefined => {
    const given = ctx.headers['if-match'];
    if (given === undefined) return v4Error(ns, 428, 'PLAT-10004', 'MISSING_ETAG_HEADER', 'The If-Match header with the entity ETag is required.');
    if (given !== current) return v4Error(ns, 412, 'PLAT-10005', 'INVALID_ETAG', 'Invalid eTag header');
    return undefined;
  };

  const findDrp = (rpId: string, vmrpId: string, drpId: string): { snapshot: Snapshot; disk: Snapshot['vms'][number]['disks'][number] } | undefined => {
    const snapshot = completeRp(rpId);
    const part = snapshot?.vms.find((p) => p.vmRecoveryPointUuid === vmrpId);
    const disk = part?.disks.find((d) => d.diskRecoveryPointUuid === drpId);
    return snapshot && disk ? { snapshot, disk } : undefined;
  };

  const vgTask = (ctx: Ctx, operation: string, vg: VolumeGroup, work: () => Promise<void>): Reply =>
    idempotent(ctx, 'volumes', () =>
      sim.tasks.start(operation, world.state.clusters.find((c) => !c.isPrismCentral)?.uuid ?? '', [{ extId: vg.uuid, rel: 'volumes:config:volume-group', kind: 'volume_group', name: vg.name }], async () => {
        await work();
        vg.specVersion += 1;
        world.changed();
        return { completionDetails: [{ name: 'volumeGroupExtId', value: vg.uuid }] };
      }),
    );

  const routes: Route[] = [
    // ---- vmm
    {
      method: 'GET',
      template: `${vmm}/vms`,
      access: 'read',
      handler: (ctx) =>
        list(ctx, 'vmm', 'vmm.v4.ahv.config.ListVmsApiResponse', world.state.vms, (vm) => ({ name: vm.name, extId: vm.uuid, 'cluster/extId': vm.clusterUuid, powerState: vm.powerState }), renderVm),
    },
    {
      method: 'GET',
      template: `${vmm}/vms/{extId}`,
      access: 'read',
      handler: (ctx) => {
        const vm = world.vmByUuid(ctx.params.extId ?? '');
        if (!vm) return vmNotFound(ctx.params.extId ?? '');
        return ok('vmm.v4.ahv.config.GetVmApiResponse', renderVm(vm), { ETag: vmEtag(vm) });
      },
    },
    {
      method: 'GET',
      template: `${vmm}/vms/{extId}/guest-tools`,
      access: 'read',
      handler: (ctx) => {
        const vm = world.vmByUuid(ctx.params.extId ?? '');
        if (!vm) return vmNotFound(ctx.params.extId ?? '');
        return ok('vmm.v4.ahv.config.GetGuestToolsApiResponse', guestTools(vm), { ETag: vmEtag(vm) });
      },
    },
    // ---- prism categories (to resolve vm categories[].extId to key/value)
    {
      method: 'GET',
      template: '/api/prism/v4.0/config/categories',
      access: 'read',
      handler: (ctx) => {
        const pairs = new Map<string, { key: string; value: string }>();
        for (const vm of world.state.vms) for (const [key, value] of Object.entries(vm.categories)) pairs.set(categoryExtId(key, value), { key, value });
        return list(ctx, 'prism', 'prism.v4.config.ListCategoriesApiResponse', [...pairs.entries()], ([extId, c]) => ({ extId, key: c.key, value: c.value }), ([extId, c]) => ({ $objectType: 'prism.v4.config.Category', extId, key: c.key, value: c.value, type: 'USER' }));
      },
    },
    // ---- clustermgmt
    {
      method: 'GET',
      template: '/api/clustermgmt/v4.0/config/clusters',
      access: 'read',
      handler: (ctx) => list(ctx, 'clustermgmt', 'clustermgmt.v4.config.ListClustersApiResponse', world.state.clusters, (c) => ({ name: c.name, extId: c.uuid }), (c) => renderCluster(sim, c)),
    },
    {
      method: 'GET',
      template: '/api/clustermgmt/v4.0/config/clusters/{extId}',
      access: 'read',
      handler: (ctx) => {
        const cluster = world.state.clusters.find((c) => c.uuid === ctx.params.extId);
        if (!cluster) return v4Error('clustermgmt', 404, 'CLU-30100', 'CLUSTER_NOT_FOUND', `Cluster with extId '${ctx.params.extId}' is not found.`);
        return ok('clustermgmt.v4.config.GetClusterApiResponse', renderCluster(sim, cluster), { ETag: etagOf('cluster', cluster.uuid) });
      },
    },
    // ---- dataprotection
    {
      method: 'POST',
      template: `${dp}/config/recovery-points`,
      access: 'write',
      handler: (ctx) => {
        const parsed = parse('dataprotection', rpCreateSchema, ctx.body);
        if (!parsed.ok) return parsed.reply;
        const body = parsed.value;
        return idempotent(ctx, 'dataprotection', () => {
          const vms: SimVm[] = [];
          for (const ref of body.vmRecoveryPoints) {
            const vm = world.vmByUuid(ref.vmExtId);
            if (!vm) return v4Error('dataprotection', 404, 'DATAPROTECTION-30101', 'VM_NOT_FOUND', `VM with extId '${ref.vmExtId}' is not found.`, { vmExtId: ref.vmExtId });
            vms.push(vm);
          }
          return startSnapshot(sim, {
            api: 'v4',
            name: body.name ?? `rp-${vms[0]?.name}`,
            requestedType: body.recoveryPointType ?? Consistency.Crash,
            vms,
            expirationTime: body.expirationTime,
            operation: 'CreateRecoveryPoint',
            entityRel: 'dataprotection:config:recovery-point',
          }).task;
        });
      },
    },
    {
      method: 'GET',
      template: `${dp}/config/recovery-points`,
      access: 'protected',
      handler: (ctx) =>
        list(
          ctx,
          'dataprotection',
          'dataprotection.v4.config.ListRecoveryPointsApiResponse',
          world.state.snapshots.filter((s) => s.api === 'v4' && s.state === 'COMPLETE'),
          (s) => ({ name: s.name, extId: s.uuid, recoveryPointType: rpType(s) }),
          (s) => renderRp(sim, s),
        ),
    },
    {
      method: 'GET',
      template: `${dp}/config/recovery-points/{extId}`,
      access: 'protected',
      handler: (ctx) => {
        const snapshot = completeRp(ctx.params.extId ?? '');
        if (!snapshot) return rpNotFound(ctx.params.extId ?? '');
        return ok('dataprotection.v4.config.GetRecoveryPointApiResponse', renderRp(sim, snapshot), { ETag: rpEtag(snapshot) });
      },
    },
    {
      method: 'DELETE',
      template: `${dp}/config/recovery-points/{extId}`,
      access: 'write',
      handler: (ctx) => {
        const snapshot = completeRp(ctx.params.extId ?? '');
        if (!snapshot) return rpNotFound(ctx.params.extId ?? '');
        const bad = checkEtag(ctx, 'dataprotection', rpEtag(snapshot));
        if (bad) return bad;
        return idempotent(ctx, 'dataprotection', () =>
          sim.tasks.start('DeleteRecoveryPoint', world.vmByUuid(snapshot.requestedVmUuids[0] ?? '')?.clusterUuid ?? '', [{ extId: snapshot.uuid, rel: 'dataprotection:config:recovery-point', kind: 'recovery_point' }], async () => {
            await world.deleteSnapshot(snapshot);
            return {};
          }),
        );
      },
    },
    {
      method: 'GET',
      template: `${dp}/config/recovery-points/{rp}/vm-recovery-points/{extId}`,
      access: 'protected',
      handler: (ctx) => {
        const snapshot = completeRp(ctx.params.rp ?? '');
        const part = snapshot?.vms.find((p) => p.vmRecoveryPointUuid === ctx.params.extId);
        if (!snapshot || !part) return v4Error('dataprotection', 404, 'DATAPROTECTION-30102', 'VM_RECOVERY_POINT_NOT_FOUND', `VM recovery point '${ctx.params.extId}' of recovery point '${ctx.params.rp}' is not found.`);
        return ok('dataprotection.v4.config.GetVmRecoveryPointApiResponse', renderVmRp(sim, snapshot, part), { ETag: rpEtag(snapshot) });
      },
    },
    {
      method: 'POST',
      template: `${dp}/config/recovery-points/{extId}/$actions/discover-cluster`,
      access: 'protected',
      handler: (ctx) => {
        const parsed = parse('dataprotection', discoverSchema, ctx.body);
        if (!parsed.ok) return parsed.reply;
        if (!completeRp(ctx.params.extId ?? '')) return rpNotFound(ctx.params.extId ?? '');
        return ok('dataprotection.v4.common.ClusterDiscoverApiResponse', {
          $objectType: 'dataprotection.v4.common.ClusterInfo',
          $reserved: reserved,
          clusterIp: ipAddress(sim.config.listenIp),
          jwtToken: sim.issueJwt(ctx.user),
        });
      },
    },
    {
      method: 'POST',
      template: `${dp}/content/recovery-points/{rp}/vm-recovery-points/{vmrp}/disk-recovery-points/{extId}/$actions/compute-changed-regions`,
      access: 'protected',
      handler: async (ctx) => {
        const parsed = parse('dataprotection', crtSchema, ctx.body);
        if (!parsed.ok) return parsed.reply;
        const spec = parsed.value;
        const blockSize = spec.blockSizeByte ?? 32768;
        if (!blockSizes.includes(blockSize)) return v4Error('dataprotection', 400, 'DATAPROTECTION-40010', 'INVALID_ARGUMENT', `blockSizeByte must be one of ${blockSizes.join(', ')}, got ${blockSize}`);
        const refs = [spec.referenceRecoveryPointExtId, spec.referenceVmRecoveryPointExtId, spec.referenceDiskRecoveryPointExtId];
        const refCount = refs.filter((r) => r !== undefined).length;
        if (refCount !== 0 && refCount !== 3) return v4Error('dataprotection', 400, 'DATAPROTECTION-40011', 'INVALID_ARGUMENT', 'referenceRecoveryPointExtId, referenceVmRecoveryPointExtId and referenceDiskRecoveryPointExtId must be given together');
        const target = findDrp(ctx.params.rp ?? '', ctx.params.vmrp ?? '', ctx.params.extId ?? '');
        const map = target ? await world.snapshotMap(target.disk.path) : undefined;
        if (!target || !map) return v4Error('dataprotection', 404, 'DATAPROTECTION-30103', 'DISK_RECOVERY_POINT_NOT_FOUND', `Disk recovery point '${ctx.params.extId}' is not found.`);
        let reference: BlockMap | undefined;
        if (refCount === 3) {
          const ref = findDrp(refs[0] ?? '', refs[1] ?? '', refs[2] ?? '');
          reference = ref ? await world.snapshotMap(ref.disk.path) : undefined;
          if (!ref || !reference) return v4Error('dataprotection', 404, 'DATAPROTECTION-30103', 'DISK_RECOVERY_POINT_NOT_FOUND', `Reference disk recovery point '${refs[2]}' is not found.`);
          if (ref.disk.diskUuid !== target.disk.diskUuid) return v4Error('dataprotection', 400, 'DATAPROTECTION-40012', 'INVALID_ARGUMENT', `Reference disk recovery point is of disk ${ref.disk.diskUuid}, not ${target.disk.diskUuid}`);
        }
        const offset = spec.offset ?? 0;
        const result = changedRegions({
          map,
          sizeBytes: target.disk.sizeBytes,
          reference,
          startOffset: offset,
          endOffset: spec.length === undefined ? target.disk.sizeBytes : offset + spec.length,
          alignment: blockSize,
          maxRegions: sim.config.crtPageRegions,
        });
        const data = result.regions.map((r) => ({ $objectType: 'dataprotection.v4.content.ChangedRegion', offset: r.offset, length: r.length, regionType: r.type }));
        return ok('dataprotection.v4.content.ChangedVmRegionsApiResponse', data, undefined, { total: data.length });
      },
    },
    // ---- prism tasks
    {
      method: 'GET',
      template: '/api/prism/v4.0/config/tasks/{extId}',
      access: 'read',
      handler: (ctx) => {
        const task = sim.tasks.get((ctx.params.extId ?? '').replace(taskIdPrefix, ''));
        if (!task) return v4Error('prism', 404, 'PRISM-30100', 'TASK_NOT_FOUND', `Task with extId '${ctx.params.extId}' is not found.`);
        return ok('prism.v4.config.GetTaskApiResponse', renderTask(sim, task), { ETag: etagOf('task', task.uuid, task.logicalTimestamp) });
      },
    },
    {
      method: 'POST',
      template: '/api/prism/v4.0/config/tasks/{extId}/$actions/cancel',
      access: 'write',
      handler: (ctx) => {
        const result = sim.tasks.cancel((ctx.params.extId ?? '').replace(taskIdPrefix, ''));
        if (result === 'not-found') return v4Error('prism', 404, 'PRISM-30100', 'TASK_NOT_FOUND', `Task with extId '${ctx.params.extId}' is not found.`);
        if (result === 'not-cancelable') return v4Error('prism', 400, 'PRISM-40100', 'TASK_NOT_CANCELABLE', `Task with extId '${ctx.params.extId}' cannot be canceled.`);
        return ok('prism.v4.config.CancelTaskApiResponse', { $objectType: 'prism.v4.config.TaskReference', extId: ctx.params.extId }, undefined, undefined, 202);
      },
    },
    // ---- volumes
    {
      method: 'POST',
      template: vol,
      access: 'write',
      handler: (ctx) => {
        const parsed = parse('volumes', vgCreateSchema, ctx.body);
        if (!parsed.ok) return parsed.reply;
        const vg: VolumeGroup = { uuid: randomUUID(), name: parsed.value.name, createdAt: new Date().toISOString(), disks: [], initiators: [], specVersion: 0 };
        return idempotent(ctx, 'volumes', () =>
          sim.tasks.start('CreateVolumeGroup', world.state.clusters.find((c) => !c.isPrismCentral)?.uuid ?? '', [{ extId: vg.uuid, rel: 'volumes:config:volume-group', kind: 'volume_group', name: vg.name }], async () => {
            world.state.volumeGroups.push(vg);
            world.changed();
            return { completionDetails: [{ name: 'volumeGroupExtId', value: vg.uuid }] };
          }),
        );
      },
    },
    {
      method: 'GET',
      template: vol,
      access: 'protected',
      handler: (ctx) => list(ctx, 'volumes', 'volumes.v4.config.ListVolumeGroupsApiResponse', world.state.volumeGroups, (vg) => ({ name: vg.name, extId: vg.uuid }), (vg) => renderVg(sim, vg)),
    },
    {
      method: 'GET',
      template: `${vol}/{extId}`,
      access: 'protected',
      handler: (ctx) => {
        const vg = world.state.volumeGroups.find((v) => v.uuid === ctx.params.extId);
        if (!vg) return vgNotFound(ctx.params.extId ?? '');
        return ok('volumes.v4.config.GetVolumeGroupApiResponse', renderVg(sim, vg), { ETag: vgEtag(vg) });
      },
    },
    {
      method: 'DELETE',
      template: `${vol}/{extId}`,
      access: 'write',
      handler: (ctx) => {
        const vg = world.state.volumeGroups.find((v) => v.uuid === ctx.params.extId);
        if (!vg) return vgNotFound(ctx.params.extId ?? '');
        const bad = checkEtag(ctx, 'volumes', vgEtag(vg));
        if (bad) return bad;
        return vgTask(ctx, 'DeleteVolumeGroup', vg, async () => {
          await sim.tgtd?.remove(iqnOf(vg));
          world.state.volumeGroups = world.state.volumeGroups.filter((v) => v !== vg);
        });
      },
    },
    {
      method: 'GET',
      template: `${vol}/{extId}/disks`,
      access: 'protected',
      handler: (ctx) => {
        const vg = world.state.volumeGroups.find((v) => v.uuid === ctx.params.extId);
        if (!vg) return vgNotFound(ctx.params.extId ?? '');
        return list(ctx, 'volumes', 'volumes.v4.config.ListVolumeDisksApiResponse', vg.disks, (d) => ({ extId: d.uuid }), (d) => renderVgDisk(vg, d));
      },
    },
    {
      method: 'POST',
      template: `${vol}/{extId}/disks`,
      access: 'write',
      handler: (ctx) => {
        const vg = world.state.volumeGroups.find((v) => v.uuid === ctx.params.extId);
        if (!vg) return vgNotFound(ctx.params.extId ?? '');
        const parsed = parse('volumes', vgDiskSchema, ctx.body);
        if (!parsed.ok) return parsed.reply;
        const drpId = parsed.value.diskDataSourceReference.extId;
        const source = world.diskRecoveryPoint(drpId);
        if (!source || source.snapshot.state !== 'COMPLETE') return v4Error('volumes', 404, 'VOLUMES-30101', 'DISK_RECOVERY_POINT_NOT_FOUND', `Disk recovery point '${drpId}' is not found.`);
        const index = parsed.value.index ?? vg.disks.length;
        return vgTask(ctx, 'CreateVolumeDisk', vg, async () => {
          vg.disks.push({ uuid: randomUUID(), index, diskRecoveryPointUuid: drpId, path: source.disk.path, sizeBytes: source.disk.sizeBytes });
          if (vg.initiators.length > 0) await exportVolumeGroup(sim, vg);
        });
      },
    },
    {
      method: 'POST',
      template: `${vol}/{extId}/$actions/attach-iscsi-client`,
      access: 'write',
      handler: (ctx) => {
        const vg = world.state.volumeGroups.find((v) => v.uuid === ctx.params.extId);
        if (!vg) return vgNotFound(ctx.params.extId ?? '');
        const parsed = parse('volumes', iscsiClientSchema, ctx.body);
        if (!parsed.ok) return parsed.reply;
        const initiator = parsed.value.iscsiInitiatorName;
        if (!initiator) return v4Error('volumes', 400, 'VOLUMES-40001', 'INVALID_ARGUMENT', 'iscsiInitiatorName is required');
        return vgTask(ctx, 'AttachIscsiClient', vg, async () => {
          if (!vg.initiators.includes(initiator)) vg.initiators.push(initiator);
          await exportVolumeGroup(sim, vg);
        });
      },
    },
    {
      method: 'POST',
      template: `${vol}/{extId}/$actions/detach-iscsi-client`,
      access: 'write',
      handler: (ctx) => {
        const vg = world.state.volumeGroups.find((v) => v.uuid === ctx.params.extId);
        if (!vg) return vgNotFound(ctx.params.extId ?? '');
        const parsed = parse('volumes', iscsiClientSchema, ctx.body);
        if (!parsed.ok) return parsed.reply;
        // The SDK detaches by IscsiClientAttachment {extId} (the iSCSI client's extId); an initiator name works too.
        const initiator = parsed.value.iscsiInitiatorName ?? vg.initiators.find((name) => iscsiClientExtId(name) === parsed.value.extId);
        if (!initiator) return v4Error('volumes', 404, 'VOLUMES-30102', 'ISCSI_CLIENT_NOT_ATTACHED', `iSCSI client '${parsed.value.extId ?? ''}' is not attached to volume group '${vg.uuid}'.`);
        return vgTask(ctx, 'DetachIscsiClient', vg, async () => {
          vg.initiators = vg.initiators.filter((i) => i !== initiator);
          await exportVolumeGroup(sim, vg);
        });
      },
    },
    {
      method: 'GET',
      template: `${vol}/{extId}/iscsi-client-attachments`,
      access: 'protected',
      handler: (ctx) => {
        const vg = world.state.volumeGroups.find((v) => v.uuid === ctx.params.extId);
        if (!vg) return vgNotFound(ctx.params.extId ?? '');
        return list(ctx, 'volumes', 'volumes.v4.config.ListExternalIscsiAttachmentsApiResponse', vg.initiators, (name) => ({ extId: iscsiClientExtId(name) }), (name) => ({
          $objectType: 'volumes.v4.config.IscsiClientAttachment',
          extId: iscsiClientExtId(name),
          clusterReference: world.state.clusters.find((c) => !c.isPrismCentral)?.uuid,
        }));
      },
    },
    {
      method: 'GET',
      template: '/api/volumes/v4.0/config/iscsi-clients',
      access: 'protected',
      handler: (ctx) => {
        const names = [...new Set(world.state.volumeGroups.flatMap((vg) => vg.initiators))].sort();
        return list(ctx, 'volumes', 'volumes.v4.config.ListIscsiClientsApiResponse', names, (name) => ({ extId: iscsiClientExtId(name), iscsiInitiatorName: name }), (name) => renderIscsiClient(sim, name));
      },
    },
    {
      method: 'GET',
      template: '/api/volumes/v4.0/config/iscsi-clients/{extId}',
      access: 'protected',
      handler: (ctx) => {
        const name = world.state.volumeGroups.flatMap((vg) => vg.initiators).find((n) => iscsiClientExtId(n) === ctx.params.extId);
        if (!name) return v4Error('volumes', 404, 'VOLUMES-30103', 'ISCSI_CLIENT_NOT_FOUND', `iSCSI client with extId '${ctx.params.extId}' is not found.`);
        return ok('volumes.v4.config.GetIscsiClientApiResponse', renderIscsiClient(sim, name), { ETag: etagOf('iscsi-client', ctx.params.extId ?? '') });
      },
    },
  ];
  return routes;
}

/** Exposed for the admin API: the iSCSI IQN of a volume group. */
export { iqnOf };
