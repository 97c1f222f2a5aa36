/** v3 API of the simulator: behaviour, and every response validated against the published swagger files. */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSim, type RunningSim } from '../test/support/sim.ts';
import { call, loadSwaggerValidators, type HttpResult, type SwaggerValidator } from './testkit.ts';

let sim: RunningSim;
let pc: SwaggerValidator;
let pe: SwaggerValidator;

const v3 = '/api/nutanix/v3';

/** Calls and checks the response against the PC (or PE) swagger operation `template`. */
async function conform(spec: 'pc' | 'pe', method: string, template: string, path: string, body?: unknown): Promise<HttpResult> {
  const res = await call(sim, method, `${v3}${path}`, { body });
  const errors = (spec === 'pc' ? pc : pe).validate(method, template, res.status, res.body);
  expect(errors, `${method} ${path} → ${res.status} ${res.text.slice(0, 300)}`).toEqual([]);
  return res;
}

interface VmEntity {
  metadata: { uuid: string; spec_version: number; entity_version: string; categories: Record<string, string> };
  spec: { name: string; resources: { disk_list: Array<{ uuid: string; disk_size_bytes?: number; device_properties: { device_type: string; disk_address: { adapter_type: string; device_index: number } } }> } };
  status: { execution_context: { task_uuid: unknown }; resources: { guest_tools: { nutanix_guest_tools: { ngt_state: string; is_reachable: boolean } } } };
}

beforeAll(async () => {
  [sim, { pc, pe }] = await Promise.all([startSim({ vms: 30, clusters: 2, crtPageRegions: 4 }), loadSwaggerValidators()]);
});

afterAll(async () => {
  await sim?.stop();
});

describe('v3 Prism Central', () => {
  it('lists VMs in pages of 20 by default with total_matches, and filters by FIQL', async () => {
    const first = await conform('pc', 'POST', '/vms/list', '/vms/list', { kind: 'vm' });
    const body = first.body as { metadata: { total_matches: number; length: number }; entities: VmEntity[] };
    expect(body.metadata.total_matches).toBe(30);
    expect(body.entities).toHaveLength(20);
    const second = (await conform('pc', 'POST', '/vms/list', '/vms/list', { kind: 'vm', offset: 20, length: 20 })).body as { entities: VmEntity[] };
    const names = new Set([...body.entities, ...second.entities].map((e) => e.spec.name));
    expect(names.size).toBe(30);

    const exact = (await conform('pc', 'POST', '/vms/list', '/vms/list', { filter: 'vm_name==vm-0007' })).body as { metadata: { total_matches: number; filter: string }; entities: VmEntity[] };
    expect(exact.metadata).toMatchObject({ total_matches: 1, filter: 'vm_name==vm-0007' });
    expect(exact.entities[0]?.spec.name).toBe('vm-0007');
    const contains = (await conform('pc', 'POST', '/vms/list', '/vms/list', { filter: 'vm_name=@vm-001', length: 500 })).body as { metadata: { total_matches: number } };
    expect(contains.metadata.total_matches).toBe(10);
  });

  it('rejects length above 500 like Prism (422 INVALID_REQUEST)', async () => {
    const res = await conform('pc', 'POST', '/vms/list', '/vms/list', { length: 501 });
    expect(res.status).toBe(422);
    expect(res.body).toMatchObject({ state: 'ERROR', code: 422, message_list: [{ reason: 'INVALID_REQUEST' }] });
  });

  it('returns a VM with CD-ROM, volume-group device, NGT, categories and array task_uuid', async () => {
    const list = (await call(sim, 'POST', `${v3}/vms/list`, { body: { filter: 'vm_name==vm-0015' } })).body as { entities: VmEntity[] };
    const uuid = list.entities[0]?.metadata.uuid ?? '';
    const res = await conform('pc', 'GET', '/vms/{uuid}', `/vms/${uuid}`);
    const vm = res.body as VmEntity;
    const types = vm.spec.resources.disk_list.map((d) => d.device_properties.device_type);
    expect(types).toEqual(expect.arrayContaining(['CDROM', 'DISK', 'VOLUME_GROUP']));
    expect(Array.isArray(vm.status.execution_context.task_uuid)).toBe(true);
    expect(vm.metadata.categories).toHaveProperty('Environment');
    expect(vm.status.resources.guest_tools.nutanix_guest_tools.ngt_state).toBe('INSTALLED');
    const missing = await conform('pc', 'GET', '/vms/{uuid}', '/vms/00000000-0000-4000-8000-00000000dead');
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ code: 404, message_list: [{ reason: 'ENTITY_NOT_FOUND' }] });
  });

  it('lists the PC itself and AOS clusters with versions and addresses', async () => {
    const res = await conform('pc', 'POST', '/clusters/list', '/clusters/list', {});
    const entities = (res.body as { entities: Array<{ status: { name: string; resources: { config: { service_list: string[]; software_map: { NOS: { version: string } } }; network: { external_ip: string; external_data_services_ip?: string } } } }> }).entities;
    expect(entities).toHaveLength(3);
    const pcEntry = entities.filter((e) => e.status.resources.config.service_list.includes('PRISM_CENTRAL'));
    expect(pcEntry).toHaveLength(1);
    for (const aos of entities.filter((e) => e.status.resources.config.service_list.includes('AOS'))) {
      expect(aos.status.resources.config.software_map.NOS.version).toBe('6.8.1');
      expect(aos.status.resources.network.external_ip).toBe(new URL(sim.endpoint).hostname);
      expect(aos.status.resources.network.external_data_services_ip).toBe(sim.dataServicesIp);
    }
  });

  it('describes the Prism Central itself (prism_central) with its release', async () => {
    const res = await conform('pc', 'GET', '/prism_central', '/prism_central');
    expect(res.body).toMatchObject({ resources: { version: 'pc.2024.3.0.1', type: 'PC' } });
  });

  it('hands out, returns and deletes idempotence identifiers', async () => {
    const created = await conform('pc', 'POST', '/idempotence_identifiers', '/idempotence_identifiers', { client_identifier: 'backup-host', count: 2, valid_duration_in_minutes: 10 });
    expect((created.body as { uuid_list: string[] }).uuid_list).toHaveLength(2);
    const got = await call(sim, 'GET', `${v3}/idempotence_identifiers/backup-host`);
    expect(got.body).toEqual(created.body);
    const deleted = await call(sim, 'DELETE', `${v3}/idempotence_identifiers/backup-host`);
    expect([deleted.status, deleted.text]).toEqual([200, 'null']);
    expect((await call(sim, 'GET', `${v3}/idempotence_identifiers/backup-host`)).status).toBe(404);
  });
});

describe('v3 Prism Element snapshots and changed regions', () => {
  it('creates, lists, reads and deletes a vm_snapshot with file paths; tasks validate', async () => {
    const vm = ((await call(sim, 'POST', `${v3}/vms/list`, { body: { filter: 'vm_name==vm-0004' } })).body as { entities: VmEntity[] }).entities[0];
    const vmUuid = vm?.metadata.uuid ?? '';
    const ids = (await call(sim, 'POST', `${v3}/idempotence_identifiers`, { body: { client_identifier: 'snap', count: 1 } })).body as { uuid_list: string[] };
    const snapUuid = ids.uuid_list[0] ?? '';
    const request = { api_version: '3.0', metadata: { kind: 'vm_snapshot', uuid: snapUuid }, spec: { name: 'backup-1', resources: { entity_uuid: vmUuid }, snapshot_type: 'CRASH_CONSISTENT' } };
    const created = await conform('pe', 'POST', '/vm_snapshots', '/vm_snapshots', request);
    expect(created.status).toBe(202);
    const taskUuid = (created.body as { status: { execution_context: { task_uuid: string } } }).status.execution_context.task_uuid;
    expect(typeof taskUuid).toBe('string');
    // Re-posting the same uuid (idempotence identifier) returns the same snapshot and task.
    const again = await call(sim, 'POST', `${v3}/vm_snapshots`, { body: request });
    expect((again.body as { status: { execution_context: { task_uuid: string } } }).status.execution_context.task_uuid).toBe(taskUuid);

    const poll = await conform('pc', 'POST', '/tasks/poll', '/tasks/poll', { task_uuid_list: [taskUuid], poll_timeout_seconds: 10 });
    expect(poll.body).toMatchObject({ has_poll_timed_out: false, entities: [{ uuid: taskUuid, status: 'SUCCEEDED' }] });
    await conform('pc', 'GET', '/tasks/{uuid}', `/tasks/${taskUuid}`);

    const got = await conform('pe', 'GET', '/vm_snapshots/{uuid}', `/vm_snapshots/${snapUuid}`);
    const status = (got.body as { status: { state: string; snapshot_type: string; snapshot_file_list: Array<{ file_path: string; snapshot_file_path: string }> } }).status;
    expect(status.state).toBe('COMPLETE');
    expect(status.snapshot_type).toBe('CRASH_CONSISTENT');
    expect(status.snapshot_file_list).toHaveLength(2);
    const disks = vm?.spec.resources.disk_list.filter((d) => d.device_properties.device_type === 'DISK').map((d) => d.uuid) ?? [];
    for (const file of status.snapshot_file_list) {
      expect(disks.some((d) => file.file_path.endsWith(d))).toBe(true);
      expect(file.snapshot_file_path.startsWith(sim.dataDir)).toBe(true);
    }
    const listed = await conform('pe', 'POST', '/vm_snapshots/list', '/vm_snapshots/list', { filter: `entity_uuid==${vmUuid}` });
    expect((listed.body as { metadata: { total_matches: number } }).metadata.total_matches).toBe(1);

    const crt = await conform('pe', 'POST', '/data/changed_regions', '/data/changed_regions', { snapshot_file_path: status.snapshot_file_list[0]?.snapshot_file_path });
    expect((crt.body as { region_list: unknown[] }).region_list.length).toBeGreaterThan(0);

    const deleted = await conform('pe', 'DELETE', '/vm_snapshots/{uuid}', `/vm_snapshots/${snapUuid}`);
    expect(deleted.status).toBe(202);
    const deleteTask = (deleted.body as { status: { execution_context: { task_uuid: string } } }).status.execution_context.task_uuid;
    await call(sim, 'POST', `${v3}/tasks/poll`, { body: { task_uuid_list: [deleteTask], poll_timeout_seconds: 10 } });
    expect((await conform('pe', 'GET', '/vm_snapshots/{uuid}', `/vm_snapshots/${snapUuid}`)).status).toBe(404);
    // The files are moved aside by the task (and freed in the background), so the path no longer opens.
    expect(existsSync(status.snapshot_file_list[0]?.snapshot_file_path ?? '')).toBe(false);
    const gone = await conform('pe', 'POST', '/data/changed_regions', '/data/changed_regions', { snapshot_file_path: status.snapshot_file_list[0]?.snapshot_file_path });
    expect(gone.status).toBe(404);
  });

  it('pages changed regions with next_offset and reports exactly the written blocks', async () => {
    const vmUuid = ((await call(sim, 'POST', `${v3}/vms/list`, { body: { filter: 'vm_name==vm-0006' } })).body as { entities: VmEntity[] }).entities[0]?.metadata.uuid ?? '';
    const snapshot = async (name: string): Promise<string> => {
      const res = await call(sim, 'POST', `${v3}/vm_snapshots`, { body: { metadata: { kind: 'vm_snapshot' }, spec: { name, resources: { entity_uuid: vmUuid } } } });
      const body = res.body as { metadata: { uuid: string }; status: { execution_context: { task_uuid: string } } };
      await call(sim, 'POST', `${v3}/tasks/poll`, { body: { task_uuid_list: [body.status.execution_context.task_uuid], poll_timeout_seconds: 10 } });
      const got = (await call(sim, 'GET', `${v3}/vm_snapshots/${body.metadata.uuid}`)).body as { status: { snapshot_file_list: Array<{ snapshot_file_path: string }> } };
      return got.status.snapshot_file_list[0]?.snapshot_file_path ?? '';
    };
    const base = await snapshot('base');
    const report = await sim.admin.write('vm-0006', 0, 5, 42);
    const next = await snapshot('incr');
    const regions: Array<{ offset: number; length: number; type: string }> = [];
    let start = 0;
    let pages = 0;
    for (;;) {
      const res = await conform('pe', 'POST', '/data/changed_regions', '/data/changed_regions', { snapshot_file_path: next, reference_snapshot_file_path: base, start_offset: start, end_offset: 16 * 1024 * 1024 });
      const body = res.body as { region_list: typeof regions; next_offset?: number; file_size: number };
      expect(body.file_size).toBe(16 * 1024 * 1024);
      regions.push(...body.region_list);
      pages++;
      if (body.next_offset === undefined) break;
      start = body.next_offset;
    }
    // Written 64 KiB blocks, merged where adjacent and of the same kind.
    const expected: typeof regions = [];
    for (const block of report.blocks) {
      const type = block.zero ? 'ZEROED' : 'REGULAR';
      const last = expected.at(-1);
      if (last && last.type === type && last.offset + last.length === block.offset) last.length += block.length;
      else expected.push({ offset: block.offset, length: block.length, type });
    }
    expect(regions).toEqual(expected);
    expect(pages).toBeGreaterThan(1);
  });

  it('grows a disk through the admin API: the VM and the next snapshot show the new size', async () => {
    const vm = ((await call(sim, 'POST', `${v3}/vms/list`, { body: { filter: 'vm_name==vm-0008' } })).body as { entities: VmEntity[] }).entities[0];
    await sim.admin.resize('vm-0008', 0, 20 * 1024 * 1024);
    const after = (await conform('pc', 'GET', '/vms/{uuid}', `/vms/${vm?.metadata.uuid}`)).body as VmEntity;
    const disk0 = after.spec.resources.disk_list.find((d) => d.device_properties.device_type === 'DISK' && d.device_properties.disk_address.device_index === 0);
    expect(disk0?.disk_size_bytes).toBe(20 * 1024 * 1024);
    expect(after.metadata.spec_version).toBe((vm?.metadata.spec_version ?? 0) + 1);
    const created = (await call(sim, 'POST', `${v3}/vm_snapshots`, { body: { metadata: { kind: 'vm_snapshot' }, spec: { name: 'grown', resources: { entity_uuid: vm?.metadata.uuid } } } })).body as {
      metadata: { uuid: string };
      status: { execution_context: { task_uuid: string } };
    };
    await call(sim, 'POST', `${v3}/tasks/poll`, { body: { task_uuid_list: [created.status.execution_context.task_uuid], poll_timeout_seconds: 10 } });
    const files = ((await call(sim, 'GET', `${v3}/vm_snapshots/${created.metadata.uuid}`)).body as { status: { snapshot_file_list: Array<{ snapshot_file_path: string }> } }).status.snapshot_file_list;
    const crt = await conform('pe', 'POST', '/data/changed_regions', '/data/changed_regions', { snapshot_file_path: files[0]?.snapshot_file_path, start_offset: 16 * 1024 * 1024 });
    // The grown tail is a hole: nothing allocated past the old end.
    expect(crt.body).toMatchObject({ file_size: 20 * 1024 * 1024, region_list: [] });
    await expect(sim.admin.resize('vm-0008', 0, 1024 * 1024)).rejects.toThrow(/only grow/);
  });
});
