/** Prism v3 (PC intentful API + the PE vm_snapshots / changed_regions API) on /api/nutanix/v3. */
import { createHash, randomUUID } from 'node:crypto';
import { z } from 'zod';
import { changedRegions } from './disk.ts';
import { v3Error, viewerUser, type Ctx, type Reply, type Route, type Sim } from './server.ts';
import { Consistency, pcVersion, type SimCluster, type SimVm, type Snapshot, type Task } from './state.ts';
import { startSnapshot } from './snapshots.ts';

const base = '/api/nutanix/v3';
const apiVersion = '3.1';

function rfc3339(iso: string | undefined): string | undefined {
  return iso?.replace(/\.\d{3}Z$/, 'Z');
}

function usecs(iso: string | undefined): number | undefined {
  return iso === undefined ? undefined : Date.parse(iso) * 1000;
}

function specHash(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, 50);
}

function invalid(message: string, kind?: string): Reply {
  return v3Error(400, 'INVALID_REQUEST', message, kind);
}

function parseBody<T extends z.ZodType>(schema: T, body: unknown, kind: string): { ok: true; value: z.infer<T> } | { ok: false; reply: Reply } {
  const parsed = schema.safeParse(body ?? {});
  if (parsed.success) return { ok: true, value: parsed.data };
  const details: Record<string, string> = {};
  for (const issue of parsed.error.issues) details[issue.path.join('.') || '<body>'] = issue.message;
  return {
    ok: false,
    reply: {
      status: 422,
      body: { api_version: apiVersion, code: 422, kind, message_list: [{ details, message: 'Request could not be processed.', reason: 'INVALID_REQUEST' }], state: 'ERROR' },
    },
  };
}

// ---- FIQL ---------------------------------------------------------------------------------------------------

type Term = { field: string; op: '==' | '!=' | '=@'; value: string };

/** FIQL subset: `a==b`, `a!=b`, `a=@b` (contains), `;` = and, `,` = or (and binds tighter). */
function parseFiql(filter: string): Term[][] | string {
  const groups: Term[][] = [];
  for (const orPart of filter.split(',')) {
    const group: Term[] = [];
    for (const andPart of orPart.split(';')) {
      const m = /^\s*([a-z_.]+)\s*(==|!=|=@)\s*(.*?)\s*$/.exec(andPart);
      if (!m) return `unsupported FIQL term "${andPart}"`;
      group.push({ field: m[1] as string, op: m[2] as Term['op'], value: decodeURIComponent(m[3] as string) });
    }
    groups.push(group);
  }
  return groups;
}

function fiqlMatch(groups: Term[][], fields: Record<string, string | undefined>): boolean | string {
  for (const group of groups) {
    let all = true;
    for (const term of group) {
      if (!(term.field in fields)) return `unsupported filter attribute "${term.field}"`;
      const actual = fields[term.field] ?? '';
      const ok = term.op === '==' ? actual === term.value : term.op === '!=' ? actual !== term.value : actual.includes(term.value);
      if (!ok) all = false;
    }
    if (all) return true;
  }
  return false;
}

const listSchema = z.looseObject({
  kind: z.string().optional(),
  offset: z.number().int().min(0).optional(),
  length: z.number().int().min(1).optional(),
  filter: z.string().optional(),
  sort_attribute: z.string().optional(),
  sort_order: z.enum(['ASCENDING', 'DESCENDING']).optional(),
});

const maxLength = 500;

function page<T>(ctx: Ctx, kind: string, items: T[], filterFields: (item: T) => Record<string, string | undefined>, sortKey: (item: T) => string, render: (item: T) => unknown): Reply {
  const parsed = parseBody(listSchema, ctx.body, kind);
  if (!parsed.ok) return parsed.reply;
  const request = parsed.value;
  if (request.length !== undefined && request.length > maxLength) {
    return {
      status: 422,
      body: { api_version: apiVersion, code: 422, kind, message_list: [{ details: { 'metadata.length': `${request.length} is greater than the maximum of ${maxLength}` }, message: 'Request could not be processed.', reason: 'INVALID_REQUEST' }], state: 'ERROR' },
    };
  }
  let selected = items;
  if (request.filter) {
    const groups = parseFiql(request.filter);
    if (typeof groups === 'string') return invalid(groups, kind);
    const out: T[] = [];
    for (const item of items) {
      const match = fiqlMatch(groups, filterFields(item));
      if (typeof match === 'string') return invalid(match, kind);
      if (match) out.push(item);
    }
    selected = out;
  }
  if (request.sort_attribute) {
    selected = [...selected].sort((a, b) => sortKey(a).localeCompare(sortKey(b)));
    if (request.sort_order === 'DESCENDING') selected.reverse();
  }
  const offset = request.offset ?? 0;
  const length = request.length ?? 20;
  const slice = selected.slice(offset, offset + length);
  const metadata: Record<string, unknown> = { kind, total_matches: selected.length, length: slice.length, offset };
  if (request.filter !== undefined) metadata.filter = request.filter;
  if (request.sort_attribute !== undefined) metadata.sort_attribute = request.sort_attribute;
  if (request.sort_order !== undefined) metadata.sort_order = request.sort_order;
  return { status: 200, body: { api_version: apiVersion, metadata, entities: slice.map(render) } };
}

// ---- entity renderers ---------------------------------------------------------------------------------------

function ngtStatus(vm: SimVm): Record<string, unknown> {
  const ngt = vm.ngt;
  return {
    nutanix_guest_tools: {
      ngt_state: ngt.installed ? 'INSTALLED' : 'UNINSTALLED',
      state: ngt.enabled ? 'ENABLED' : 'DISABLED',
      iso_mount_state: 'UNMOUNTED',
      enabled_capability_list: ngt.vssCapable ? ['VSS_SNAPSHOT'] : [],
      vss_snapshot_capable: ngt.vssCapable,
      is_reachable: ngt.reachable,
      ...(ngt.installed ? { version: '4.1', guest_os_version: 'linux:64:ubuntu-22.04' } : {}),
      available_version: '4.1',
      vm_mobility_drivers_installed: false,
    },
  };
}

function vmResources(sim: Sim, vm: SimVm, status: boolean): Record<string, unknown> {
  const cluster = sim.world.state.clusters.find((c) => c.uuid === vm.clusterUuid);
  const containerRef = { kind: 'storage_container', uuid: vm.disks[0]?.containerUuid ?? cluster?.containerUuid, name: 'default-container' };
  const diskList: Record<string, unknown>[] = [];
  if (vm.cdrom) {
    diskList.push({
      uuid: vm.cdrom.uuid,
      device_properties: { disk_address: { adapter_type: 'IDE', device_index: 0 }, device_type: 'CDROM' },
      ...(status ? { is_migration_in_progress: false } : {}),
    });
  }
  for (const i of vm.diskListOrder) {
    const disk = vm.disks[i];
    if (!disk) continue;
    diskList.push({
      uuid: disk.uuid,
      device_properties: { disk_address: { adapter_type: disk.busType, device_index: disk.deviceIndex }, device_type: 'DISK' },
      disk_size_mib: Math.ceil(disk.sizeBytes / (1024 * 1024)),
      disk_size_bytes: disk.sizeBytes,
      storage_config: { storage_container_reference: containerRef },
      ...(status ? { is_migration_in_progress: false } : {}),
    });
  }
  if (vm.volumeGroupDevice) {
    diskList.push({
      uuid: vm.volumeGroupDevice.uuid,
      device_properties: { disk_address: { adapter_type: 'SCSI', device_index: vm.volumeGroupDevice.deviceIndex }, device_type: 'VOLUME_GROUP' },
      volume_group_reference: { kind: 'volume_group', uuid: vm.volumeGroupDevice.volumeGroupUuid },
    });
  }
  const nicList = vm.nics.map((nic) => ({
    uuid: nic.uuid,
    nic_type: 'NORMAL_NIC',
    vlan_mode: 'ACCESS',
    trunked_vlan_list: [],
    num_queues: 1,
    mac_address: nic.mac,
    ip_endpoint_list: [{ type: 'ASSIGNED', ip: nic.ip }],
    subnet_reference: { kind: 'subnet', name: 'vlan0', uuid: nic.subnetUuid },
    is_connected: true,
  }));
  const common = {
    num_sockets: 2,
    num_vcpus_per_socket: 1,
    num_threads_per_core: 1,
    memory_size_mib: 4096,
    power_state: vm.powerState,
    machine_type: 'PC',
    hardware_clock_timezone: 'UTC',
    disk_list: diskList,
    nic_list: nicList,
    gpu_list: [],
    serial_port_list: [],
    boot_config: { boot_device_order_list: ['CDROM', 'DISK', 'NETWORK'], boot_type: 'LEGACY' },
    vga_console_enabled: true,
  };
  if (!status) {
    return vm.ngt.installed
      ? { ...common, guest_tools: { nutanix_guest_tools: { state: vm.ngt.enabled ? 'ENABLED' : 'DISABLED', enabled_capability_list: vm.ngt.vssCapable ? ['VSS_SNAPSHOT'] : [] } } }
      : common;
  }
  return {
    ...common,
    hypervisor_type: 'AHV',
    protection_type: 'UNPROTECTED',
    generation_uuid: vm.biosUuid,
    bios_uuid: vm.biosUuid,
    guest_tools: ngtStatus(vm),
  };
}

function clusterRef(sim: Sim, uuid: string): { kind: string; name: string | undefined; uuid: string } {
  return { kind: 'cluster', name: sim.world.state.clusters.find((c) => c.uuid === uuid)?.name, uuid };
}

export function vmEntity(sim: Sim, vm: SimVm, taskUuids: string[] = []): Record<string, unknown> {
  const spec = { name: vm.name, description: `Simulated VM ${vm.index}`, resources: vmResources(sim, vm, false), cluster_reference: clusterRef(sim, vm.clusterUuid) };
  return {
    metadata: {
      kind: 'vm',
      uuid: vm.uuid,
      spec_version: vm.specVersion,
      spec_hash: specHash(spec),
      entity_version: String(vm.specVersion + 1),
      categories: vm.categories,
      categories_mapping: Object.fromEntries(Object.entries(vm.categories).map(([k, v]) => [k, [v]])),
      project_reference: { kind: 'project', name: '_internal', uuid: '00000000-0000-4000-8000-000000000001' },
      owner_reference: { kind: 'user', name: 'admin', uuid: '00000000-0000-4000-8000-000000000002' },
      creation_time: vm.createdAt,
      last_update_time: vm.createdAt,
    },
    spec,
    status: {
      name: vm.name,
      description: spec.description,
      state: 'COMPLETE',
      resources: vmResources(sim, vm, true),
      cluster_reference: spec.cluster_reference,
      // A GET shows task_uuid as an array (a create response shows a string): recorded quirk.
      execution_context: { task_uuid: taskUuids },
    },
    api_version: apiVersion,
  };
}

export function clusterEntity(sim: Sim, cluster: SimCluster): Record<string, unknown> {
  const ip = sim.config.listenIp;
  const build = cluster.isPrismCentral
    ? { build_type: 'release', version: 'pc', full_version: `el8.5-release-fraser-${cluster.version}-stable-pc-0.1-sim`, commit_id: '0'.repeat(40), short_commit_id: '000000', is_long_term_support: false }
    : { build_type: 'release', version: cluster.version, full_version: `el8.5-release-fraser-${cluster.version}-stable-sim`, commit_id: '1'.repeat(40), short_commit_id: '111111', is_long_term_support: true };
  const config = {
    software_map: {
      NOS: { software_type: 'NOS', status: 'INSTALLED', version: cluster.version },
      NCC: { software_type: 'NCC', status: 'INSTALLED', version: 'ncc-5.0.1' },
    },
    service_list: [cluster.isPrismCentral ? 'PRISM_CENTRAL' : 'AOS'],
    build,
    is_available: true,
    timezone: 'UTC',
    redundancy_factor: 2,
    operation_mode: 'NORMAL',
    cluster_arch: 'X86_64',
    encryption_status: 'NOT_SUPPORTED',
    domain_awareness_level: 'NODE',
  };
  const network: Record<string, unknown> = {
    external_ip: ip,
    external_subnet: '127.0.0.0/255.0.0.0',
    internal_subnet: '192.168.5.0/255.255.255.128',
    name_server_ip_list: ['127.0.0.53'],
    ntp_server_ip_list: ['0.pool.ntp.org'],
  };
  if (!cluster.isPrismCentral && sim.tgtd) network.external_data_services_ip = sim.tgtd.ip;
  const resources = cluster.isPrismCentral
    ? { config, network }
    : { config, network, nodes: { hypervisor_server_list: [{ ip, type: 'AHV', version: 'el8.nutanix.20230302.101026' }] } };
  return {
    status: { name: cluster.name, state: 'COMPLETE', resources },
    spec: { name: cluster.name, resources: { config: { software_map: config.software_map, redundancy_factor: 2, timezone: 'UTC' }, network } },
    metadata: { kind: 'cluster', uuid: cluster.uuid, spec_version: 1, spec_hash: '0'.repeat(50), categories: {}, categories_mapping: {}, creation_time: '2024-02-05T21:15:17Z', last_update_time: '2024-02-05T21:15:17Z' },
    api_version: apiVersion,
  };
}

const v3TaskStatus: Record<Task['status'], string> = {
  QUEUED: 'QUEUED',
  RUNNING: 'RUNNING',
  SUCCEEDED: 'SUCCEEDED',
  FAILED: 'FAILED',
  CANCELED: 'ABORTED',
};

export function taskEntity(task: Task): Record<string, unknown> {
  const entity: Record<string, unknown> = {
    uuid: task.uuid,
    status: v3TaskStatus[task.status],
    percentage_complete: task.progress,
    progress_message: task.operation,
    operation_type: task.operation,
    creation_time: rfc3339(task.createdAt),
    creation_time_usecs: usecs(task.createdAt),
    last_update_time: rfc3339(task.updatedAt),
    logical_timestamp: task.logicalTimestamp,
    entity_reference_list: task.entities.map((e) => ({ kind: e.kind, uuid: e.extId.replace(/^ZXJnb24=:/, ''), ...(e.name ? { name: e.name } : {}) })),
    cluster_reference: { kind: 'cluster', uuid: task.clusterUuid },
    subtask_reference_list: [],
    api_version: apiVersion,
  };
  if (task.startedAt) {
    entity.start_time = rfc3339(task.startedAt);
    entity.start_time_usecs = usecs(task.startedAt);
  }
  if (task.completedAt) {
    entity.completion_time = rfc3339(task.completedAt);
    entity.completion_time_usecs = usecs(task.completedAt);
  }
  if (task.error) {
    entity.error_code = task.error.code;
    entity.error_detail = `${task.error.code}: ${task.error.message}`;
  }
  return entity;
}

function snapshotEntity(snapshot: Snapshot, taskAsString: boolean): Record<string, unknown> {
  const part = snapshot.vms[0];
  const vmUuid = snapshot.requestedVmUuids[0];
  const spec = { name: snapshot.name, resources: { entity_uuid: vmUuid }, snapshot_type: snapshot.requestedType };
  const status: Record<string, unknown> = {
    name: snapshot.name,
    state: snapshot.state,
    resources: { entity_uuid: vmUuid },
    snapshot_file_list: (part?.disks ?? []).map((d) => ({ file_path: d.livePath, snapshot_file_path: d.path })),
  };
  if (part) {
    status.snapshot_type = part.type;
    status.consistency_group_uuid = part.vmRecoveryPointUuid;
    status.location_agnostic_uuid = snapshot.uuid;
  }
  if (snapshot.state === 'ERROR') status.message_list = [{ message: snapshot.errorMessage ?? 'snapshot failed', reason: 'INTERNAL_ERROR' }];
  if (taskAsString) status.execution_context = { task_uuid: snapshot.taskUuid };
  return {
    api_version: '3.0',
    metadata: { kind: 'vm_snapshot', uuid: snapshot.uuid, spec_version: snapshot.specVersion, creation_time: rfc3339(snapshot.createdAt), last_update_time: rfc3339(snapshot.createdAt) },
    spec,
    status,
  };
}

// ---- routes -------------------------------------------------------------------------------------------------

const idempotenceSchema = z.looseObject({
  client_identifier: z.string().min(1),
  count: z.number().int().min(1).max(4096),
  valid_duration_in_minutes: z.number().int().min(1).optional(),
});

const pollSchema = z.looseObject({
  task_uuid_list: z.array(z.string()).min(1),
  poll_timeout_seconds: z.number().int().min(0).max(30),
});

const snapshotCreateSchema = z.looseObject({
  api_version: z.string().optional(),
  metadata: z.looseObject({ kind: z.literal('vm_snapshot'), uuid: z.uuid().optional() }),
  spec: z.looseObject({
    name: z.string().max(64).optional(),
    resources: z.looseObject({ entity_uuid: z.string() }),
    snapshot_type: z.enum([Consistency.Crash, Consistency.Application]).optional(),
    expiration_time_msecs: z.number().int().optional(),
  }),
});

const crtSchema = z.looseObject({
  snapshot_file_path: z.string().min(1),
  reference_snapshot_file_path: z.string().optional(),
  start_offset: z.number().int().min(0).optional(),
  end_offset: z.number().int().min(0).optional(),
});

export function v3Routes(sim: Sim): Route[] {
  const world = sim.world;
  const vmTasks = (vm: SimVm): string[] => sim.world.state.tasks.filter((t) => t.entities.some((e) => e.extId === vm.uuid)).slice(-1).map((t) => t.uuid);

  const createSnapshot = (ctx: Ctx): Reply => {
    const parsed = parseBody(snapshotCreateSchema, ctx.body, 'vm_snapshot');
    if (!parsed.ok) return parsed.reply;
    const { metadata, spec } = parsed.value;
    const existing = metadata.uuid ? world.state.snapshots.find((s) => s.uuid === metadata.uuid) : undefined;
    if (existing) return { status: 202, body: snapshotEntity(existing, true) };
    const vm = world.vmByUuid(spec.resources.entity_uuid);
    if (!vm) return v3Error(404, 'ENTITY_NOT_FOUND', `vm : ${spec.resources.entity_uuid} does not exist.`, 'vm_snapshot');
    const { snapshot } = startSnapshot(sim, {
      api: 'v3',
      uuid: metadata.uuid,
      name: spec.name ?? `snapshot-${vm.name}`,
      requestedType: spec.snapshot_type ?? Consistency.Crash,
      vms: [vm],
      operation: 'vm_snapshot_create',
      entityRel: 'vm_snapshot',
    });
    return { status: 202, body: snapshotEntity(snapshot, true) };
  };

  return [
    {
      method: 'GET',
      template: `${base}/users/me`,
      access: 'read',
      handler: (ctx) => ({
        status: 200,
        body: {
          api_version: apiVersion,
          metadata: { kind: 'user', uuid: ctx.user === viewerUser ? '00000000-0000-4000-8000-000000000003' : '00000000-0000-4000-8000-000000000002' },
          spec: {},
          status: { name: ctx.user, state: 'COMPLETE', resources: { display_name: ctx.user, access_control_policy_reference_list: [] } },
        },
      }),
    },
    {
      // The PC describes itself (recorded shape); version is what clients show as the PC release.
      method: 'GET',
      template: `${base}/prism_central`,
      access: 'read',
      handler: () => {
        const pcCluster = world.state.clusters.find((c) => c.isPrismCentral);
        const host = world.state.clusters.find((c) => !c.isPrismCentral);
        return {
          status: 200,
          body: {
            resources: {
              should_auto_register: false,
              is_registered_to_hosting_pe: true,
              pc_size: 'kSmall',
              version: pcVersion[sim.config.api],
              cluster_uuid: pcCluster?.uuid,
              type: 'PC',
              virtual_ip: sim.config.listenIp,
              pc_vm_list: [
                {
                  vm_name: 'prism-central-vm-1',
                  num_sockets: 6,
                  memory_size_bytes: 28 * 1024 ** 3,
                  data_disk_size_bytes: 500 * 1024 ** 3,
                  status: 'NORMAL',
                  power_state: 'ON',
                  vm_uuid: pcCluster?.containerUuid,
                  nic_list: [{ ip_list: [sim.config.listenIp] }],
                  cluster_reference: { kind: 'cluster', uuid: host?.uuid },
                },
              ],
            },
          },
        };
      },
    },
    {
      method: 'POST',
      template: `${base}/vms/list`,
      access: 'read',
      handler: (ctx) =>
        page(
          ctx,
          'vm',
          world.state.vms,
          (vm) => ({ vm_name: vm.name, name: vm.name, uuid: vm.uuid, cluster_uuid: vm.clusterUuid, cluster_reference_uuid: vm.clusterUuid, power_state: vm.powerState }),
          (vm) => vm.name,
          (vm) => vmEntity(sim, vm, vmTasks(vm)),
        ),
    },
    {
      method: 'GET',
      template: `${base}/vms/{uuid}`,
      access: 'read',
      handler: (ctx) => {
        const vm = world.vmByUuid(ctx.params.uuid ?? '');
        return vm ? { status: 200, body: vmEntity(sim, vm, vmTasks(vm)) } : v3Error(404, 'ENTITY_NOT_FOUND', `vm : ${ctx.params.uuid} does not exist.`, 'vm');
      },
    },
    {
      method: 'POST',
      template: `${base}/clusters/list`,
      access: 'read',
      handler: (ctx) => page(ctx, 'cluster', world.state.clusters, (c) => ({ name: c.name, uuid: c.uuid }), (c) => c.name, (c) => clusterEntity(sim, c)),
    },
    {
      method: 'GET',
      template: `${base}/clusters/{uuid}`,
      access: 'read',
      handler: (ctx) => {
        const cluster = world.state.clusters.find((c) => c.uuid === ctx.params.uuid);
        return cluster ? { status: 200, body: clusterEntity(sim, cluster) } : v3Error(404, 'ENTITY_NOT_FOUND', `cluster : ${ctx.params.uuid} does not exist.`, 'cluster');
      },
    },
    {
      method: 'GET',
      template: `${base}/tasks/{uuid}`,
      access: 'read',
      handler: (ctx) => {
        const task = sim.tasks.get(ctx.params.uuid ?? '');
        return task ? { status: 200, body: taskEntity(task) } : v3Error(404, 'INVALID_UUID', `Invalid UUID provided: task ${ctx.params.uuid} does not exist.`, 'task');
      },
    },
    {
      method: 'POST',
      template: `${base}/tasks/poll`,
      access: 'read',
      handler: async (ctx) => {
        const parsed = parseBody(pollSchema, ctx.body, 'task');
        if (!parsed.ok) return parsed.reply;
        const { task_uuid_list: uuids, poll_timeout_seconds: timeout } = parsed.value;
        const missing = uuids.find((u) => !sim.tasks.get(u));
        if (missing) return v3Error(404, 'INVALID_UUID', `Invalid UUID provided: task ${missing} does not exist.`, 'task');
        const done = await sim.tasks.waitForAny(uuids, timeout * 1000, ctx.signal);
        const entities = uuids.map((u) => sim.tasks.get(u)).filter((t): t is Task => t !== undefined).map((t) => taskEntity(t));
        return { status: 200, body: { entities, has_poll_timed_out: !done } };
      },
    },
    {
      method: 'POST',
      template: `${base}/idempotence_identifiers`,
      access: 'write',
      handler: (ctx) => {
        const parsed = parseBody(idempotenceSchema, ctx.body, 'idempotence_identifier');
        if (!parsed.ok) return parsed.reply;
        const { client_identifier: client, count, valid_duration_in_minutes: minutes } = parsed.value;
        const record = {
          count,
          expirationTime: rfc3339(new Date(Date.now() + (minutes ?? 60) * 60_000).toISOString()) ?? '',
          uuidList: Array.from({ length: count }, () => randomUUID()),
        };
        world.state.idempotenceIdentifiers[client] = record;
        world.changed();
        return { status: 200, body: { client_identifier: client, count, expiration_time: record.expirationTime, uuid_list: record.uuidList } };
      },
    },
    {
      method: 'GET',
      template: `${base}/idempotence_identifiers/{client}`,
      access: 'read',
      handler: (ctx) => {
        const client = ctx.params.client ?? '';
        const record = world.state.idempotenceIdentifiers[client];
        if (!record) return v3Error(404, 'ENTITY_NOT_FOUND', `idempotence_identifier : ${client} does not exist.`);
        return { status: 200, body: { client_identifier: client, count: record.count, expiration_time: record.expirationTime, uuid_list: record.uuidList } };
      },
    },
    {
      method: 'DELETE',
      template: `${base}/idempotence_identifiers/{client}`,
      access: 'write',
      handler: (ctx) => {
        const client = ctx.params.client ?? '';
        if (!world.state.idempotenceIdentifiers[client]) return v3Error(404, 'ENTITY_NOT_FOUND', `idempotence_identifier : ${client} does not exist.`);
        delete world.state.idempotenceIdentifiers[client];
        world.changed();
        return { status: 200, body: null };
      },
    },
    { method: 'POST', template: `${base}/vm_snapshots`, access: 'write', handler: createSnapshot },
    {
      method: 'POST',
      template: `${base}/vm_snapshots/list`,
      access: 'protected',
      handler: (ctx) =>
        page(
          ctx,
          'vm_snapshot',
          world.state.snapshots.filter((s) => s.api === 'v3'),
          (s) => ({ entity_uuid: s.requestedVmUuids[0], name: s.name, uuid: s.uuid }),
          (s) => s.name,
          (s) => snapshotEntity(s, false),
        ),
    },
    {
      method: 'GET',
      template: `${base}/vm_snapshots/{uuid}`,
      access: 'protected',
      handler: (ctx) => {
        const snapshot = world.state.snapshots.find((s) => s.uuid === ctx.params.uuid && s.api === 'v3');
        return snapshot ? { status: 200, body: snapshotEntity(snapshot, false) } : v3Error(404, 'ENTITY_NOT_FOUND', `vm_snapshot : ${ctx.params.uuid} does not exist.`, 'vm_snapshot');
      },
    },
    {
      method: 'DELETE',
      template: `${base}/vm_snapshots/{uuid}`,
      access: 'write',
      handler: (ctx) => {
        const snapshot = world.state.snapshots.find((s) => s.uuid === ctx.params.uuid && s.api === 'v3');
        if (!snapshot) return v3Error(404, 'ENTITY_NOT_FOUND', `vm_snapshot : ${ctx.params.uuid} does not exist.`, 'vm_snapshot');
        const vm = world.vmByUuid(snapshot.requestedVmUuids[0] ?? '');
        const task = sim.tasks.start('vm_snapshot_delete', vm?.clusterUuid ?? '', [{ extId: snapshot.uuid, rel: 'vm_snapshot', kind: 'vm_snapshot' }], async () => {
          await world.deleteSnapshot(snapshot);
          return {};
        });
        return { status: 202, body: { status: { state: 'DELETE_PENDING', execution_context: { task_uuid: task.uuid } }, spec: '', api_version: '3.0', metadata: { kind: 'vm_snapshot', uuid: snapshot.uuid } } };
      },
    },
    {
      method: 'POST',
      template: `${base}/data/changed_regions`,
      access: 'protected',
      handler: async (ctx) => {
        const parsed = parseBody(crtSchema, ctx.body, 'changed_regions');
        if (!parsed.ok) return parsed.reply;
        const query = parsed.value;
        const target = world.snapshotDiskByPath(query.snapshot_file_path);
        const map = target ? await world.snapshotMap(target.disk.path) : undefined;
        if (!target || !map) return v3Error(404, 'ENTITY_NOT_FOUND', `File ${query.snapshot_file_path} does not exist.`, 'changed_regions');
        let reference;
        if (query.reference_snapshot_file_path) {
          const ref = world.snapshotDiskByPath(query.reference_snapshot_file_path);
          reference = ref ? await world.snapshotMap(ref.disk.path) : undefined;
          if (!ref || !reference) return v3Error(404, 'ENTITY_NOT_FOUND', `File ${query.reference_snapshot_file_path} does not exist.`, 'changed_regions');
          if (ref.disk.diskUuid !== target.disk.diskUuid) {
            return invalid(`reference_snapshot_file_path is a snapshot of disk ${ref.disk.diskUuid}, not of ${target.disk.diskUuid}`, 'changed_regions');
          }
        }
        const result = changedRegions({
          map,
          sizeBytes: target.disk.sizeBytes,
          reference,
          startOffset: query.start_offset ?? 0,
          endOffset: query.end_offset ?? target.disk.sizeBytes,
          alignment: 0,
          maxRegions: sim.config.crtPageRegions,
        });
        const body: Record<string, unknown> = {
          region_list: result.regions.map((r) => ({ offset: r.offset, length: r.length, type: r.type })),
          file_size: target.disk.sizeBytes,
        };
        if (result.nextOffset !== undefined) body.next_offset = result.nextOffset;
        return { status: 200, body };
      },
    },
  ];
}
