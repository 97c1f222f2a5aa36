/** v4 API of the simulator: behaviour, and every body validated against the SDK-derived schemas in schemas/v4.ts. */
import { open } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startSim, type RunningSim } from '../test/support/sim.ts';
import {
  apiResponse,
  changedRegionSchema,
  clusterInfoSchema,
  clusterSchema,
  errorResponseSchema,
  guestToolsSchema,
  recoveryPointSchema,
  taskReferenceSchema,
  taskSchema,
  vmRecoveryPointSchema,
  vmSchema,
} from './schemas/v4.ts';
import { call, waitV4Task, type CallOptions, type HttpResult } from './testkit.ts';

let sim: RunningSim;
const dp = '/api/dataprotection/v4.0';
const pageRegions = 5;
const diskSize = 32 * 1024 * 1024;

/** Calls and parses the body with `schema` (throws with the zod issues when it does not conform). */
async function conform<T extends z.ZodType>(schema: T, method: string, path: string, options?: CallOptions): Promise<{ res: HttpResult; body: z.infer<T> }> {
  const res = await call(sim, method, path, options);
  const parsed = schema.safeParse(res.body);
  if (!parsed.success) throw new Error(`${method} ${path} → ${res.status}: ${z.prettifyError(parsed.error)}\n${res.text.slice(0, 500)}`);
  return { res, body: parsed.data };
}

async function vmByName(name: string): Promise<z.infer<typeof vmSchema>> {
  const { body } = await conform(apiResponse(z.array(vmSchema)), 'GET', `/api/vmm/v4.0/ahv/config/vms?$filter=${encodeURIComponent(`name eq '${name}'`)}`);
  const vm = body.data[0];
  if (!vm) throw new Error(`no VM ${name}`);
  return vm;
}

async function createRp(vmName: string, type: 'CRASH_CONSISTENT' | 'APPLICATION_CONSISTENT', requestId?: string): Promise<{ taskExtId: string; task: Record<string, unknown> }> {
  const vm = await vmByName(vmName);
  const { res, body } = await conform(apiResponse(taskReferenceSchema), 'POST', `${dp}/config/recovery-points`, {
    body: { name: `rp-${vmName}`, recoveryPointType: type, vmRecoveryPoints: [{ vmExtId: vm.extId }] },
    headers: requestId ? { 'NTNX-Request-Id': requestId } : {},
  });
  expect(res.status).toBe(202);
  const task = await waitV4Task(sim, body.data.extId);
  taskSchema.parse(task);
  return { taskExtId: body.data.extId, task };
}

async function rpOf(task: Record<string, unknown>): Promise<z.infer<typeof recoveryPointSchema>> {
  const details = task.completionDetails as Array<{ name: string; value: string }>;
  const id = details.find((d) => d.name === 'recoveryPointExtId')?.value;
  const { body } = await conform(apiResponse(recoveryPointSchema), 'GET', `${dp}/config/recovery-points/${id}`);
  return body.data;
}

type Region = z.infer<typeof changedRegionSchema>;

/** The documented CRT paging protocol: re-ask from the end of the last region until `data` is empty. */
async function allRegions(rp: z.infer<typeof recoveryPointSchema>, diskIndex: number, spec: Record<string, unknown>, cookie: string): Promise<{ regions: Region[]; calls: number }> {
  const vmrp = rp.vmRecoveryPoints[0];
  const drp = vmrp?.diskRecoveryPoints[diskIndex];
  const path = `${dp}/content/recovery-points/${rp.extId}/vm-recovery-points/${vmrp?.extId}/disk-recovery-points/${drp?.diskRecoveryPointExtId}/$actions/compute-changed-regions`;
  const regions: Region[] = [];
  let offset = 0;
  for (let calls = 1; ; calls++) {
    const { res, body } = await conform(apiResponse(z.array(changedRegionSchema)), 'POST', path, { body: { ...spec, offset }, auth: false, cookie });
    expect(res.status).toBe(200);
    expect(body.data.length).toBeLessThanOrEqual(pageRegions);
    if (body.data.length === 0) return { regions, calls };
    regions.push(...body.data);
    const last = body.data.at(-1) as Region;
    offset = last.offset + last.length;
  }
}

async function jwtFor(rp: z.infer<typeof recoveryPointSchema>): Promise<string> {
  const { body } = await conform(apiResponse(clusterInfoSchema), 'POST', `${dp}/config/recovery-points/${rp.extId}/$actions/discover-cluster`, {
    body: { operation: 'COMPUTE_CHANGED_REGIONS', spec: {} },
  });
  expect(body.data.clusterIp.ipv4?.value).toBe(new URL(sim.endpoint).hostname);
  return `NTNX_IGW_SESSION=${body.data.jwtToken}`;
}

beforeAll(async () => {
  sim = await startSim({ vms: 120, clusters: 3, crtPageRegions: pageRegions, diskSize: `${diskSize}` });
});

afterAll(async () => {
  await sim?.stop();
});

describe('v4 vmm and clustermgmt', () => {
  it('pages VMs with $page/$limit (max 100) and filters by name', async () => {
    const seen = new Set<string>();
    for (let page = 0; ; page++) {
      const { body } = await conform(apiResponse(z.array(vmSchema)), 'GET', `/api/vmm/v4.0/ahv/config/vms?$page=${page}&$limit=100`);
      expect(body.metadata.totalAvailableResults).toBe(120);
      for (const vm of body.data) seen.add(vm.extId);
      if (!body.metadata.links?.some((l) => l.rel === 'next')) break;
    }
    expect(seen.size).toBe(120);
    const { body: dflt } = await conform(apiResponse(z.array(vmSchema)), 'GET', '/api/vmm/v4.0/ahv/config/vms');
    expect(dflt.data).toHaveLength(50);
    const tooMany = await conform(errorResponseSchema('vmm'), 'GET', '/api/vmm/v4.0/ahv/config/vms?$limit=101');
    expect(tooMany.res.status).toBe(400);
    const vm = await vmByName('vm-0015');
    expect(vm.cdRoms).toHaveLength(1);
    expect(vm.disks.map((d) => d.$backingInfoItemDiscriminator)).toContain('vmm.v4.ahv.config.ADSFVolumeGroupReference');
  });

  it('serves a VM with an ETag, its guest tools, and a 404 error body like the recorded one', async () => {
    const vm = await vmByName('vm-0002');
    const { res } = await conform(apiResponse(vmSchema), 'GET', `/api/vmm/v4.0/ahv/config/vms/${vm.extId}`);
    expect(res.headers.etag).toMatch(/^".+"$/);
    const { body } = await conform(apiResponse(guestToolsSchema), 'GET', `/api/vmm/v4.0/ahv/config/vms/${vm.extId}/guest-tools`);
    expect(body.data).toMatchObject({ isInstalled: true, isReachable: true, isVssSnapshotCapable: true });
    const missing = await conform(errorResponseSchema('vmm'), 'GET', '/api/vmm/v4.0/ahv/config/vms/00000000-0000-4000-8000-00000000dead');
    expect(missing.res.status).toBe(404);
    expect(missing.body.data.error[0]?.code).toBe('VMM-30100');
  });

  it('lists the PC and the AOS clusters with build version and data services IP', async () => {
    const { body } = await conform(apiResponse(z.array(clusterSchema)), 'GET', '/api/clustermgmt/v4.0/config/clusters');
    expect(body.data.filter((c) => c.config.clusterFunction.includes('PRISM_CENTRAL'))).toHaveLength(1);
    const aos = body.data.filter((c) => c.config.clusterFunction.includes('AOS'));
    expect(aos).toHaveLength(3);
    for (const c of aos) {
      expect(c.config.buildInfo.version).toBe('6.8.1');
      expect(c.network.externalDataServiceIp?.ipv4?.value).toBe(sim.dataServicesIp);
    }
    expect(aos.reduce((n, c) => n + c.vmCount, 0)).toBe(120);
  });
});

describe('v4 recovery points', () => {
  it('creates idempotently by NTNX-Request-Id, reads, lists and deletes with If-Match', async () => {
    const first = await createRp('vm-0002', 'CRASH_CONSISTENT', 'req-rp-1');
    const replay = await createRp('vm-0002', 'CRASH_CONSISTENT', 'req-rp-1');
    expect(replay.taskExtId).toBe(first.taskExtId);
    expect((await sim.admin.state()).recoveryPoints.filter((r) => r.name === 'rp-vm-0002')).toHaveLength(1);

    const rp = await rpOf(first.task);
    expect(rp.recoveryPointType).toBe('CRASH_CONSISTENT');
    const vmrp = rp.vmRecoveryPoints[0];
    expect(vmrp?.diskRecoveryPoints.map((d) => d.diskExtId)).toEqual((await vmByName('vm-0002')).disks.map((d) => d.extId));
    const { body: vmrpBody } = await conform(apiResponse(vmRecoveryPointSchema), 'GET', `${dp}/config/recovery-points/${rp.extId}/vm-recovery-points/${vmrp?.extId}`);
    expect(vmrpBody.data.vmExtId).toBe(vmrp?.vmExtId);
    const { body: listed } = await conform(apiResponse(z.array(recoveryPointSchema)), 'GET', `${dp}/config/recovery-points?$filter=${encodeURIComponent("name eq 'rp-vm-0002'")}`);
    expect(listed.data.map((r) => r.extId)).toEqual([rp.extId]);

    const path = `${dp}/config/recovery-points/${rp.extId}`;
    const etag = (await call(sim, 'GET', path)).headers.etag ?? '';
    const missing = await conform(errorResponseSchema('dataprotection'), 'DELETE', path);
    expect([missing.res.status, missing.body.data.error[0]?.code]).toEqual([428, 'PLAT-10004']);
    const stale = await conform(errorResponseSchema('dataprotection'), 'DELETE', path, { headers: { 'If-Match': '"stale"' } });
    expect([stale.res.status, stale.body.data.error[0]?.code]).toEqual([412, 'PLAT-10005']);
    const deleted = await conform(apiResponse(taskReferenceSchema), 'DELETE', path, { headers: { 'If-Match': etag } });
    expect(deleted.res.status).toBe(202);
    expect((await waitV4Task(sim, deleted.body.data.extId)).status).toBe('SUCCEEDED');
    expect((await call(sim, 'GET', path)).status).toBe(404);
    expect((await sim.admin.state()).recoveryPoints.filter((r) => r.extId === rp.extId)).toEqual([]);
  });

  it('makes application-consistent points per the VM NGT mode: succeed, downgrade, refuse', async () => {
    const ok = await rpOf((await createRp('vm-0004', 'APPLICATION_CONSISTENT')).task);
    expect(ok.recoveryPointType).toBe('APPLICATION_CONSISTENT');
    const downgraded = await rpOf((await createRp('vm-0005', 'APPLICATION_CONSISTENT')).task);
    expect(downgraded.recoveryPointType).toBe('CRASH_CONSISTENT');
    const refused = (await createRp('vm-0007', 'APPLICATION_CONSISTENT')).task;
    expect(refused.status).toBe('FAILED');
    expect((refused.errorMessages as Array<{ message: string }>)[0]?.message).toMatch(/application-consistent.*vm-0007.*not reachable/);
    await sim.admin.setNgt('vm-0007', { reachable: true, mode: 'succeed' });
    expect((await rpOf((await createRp('vm-0007', 'APPLICATION_CONSISTENT')).task)).recoveryPointType).toBe('APPLICATION_CONSISTENT');
  });

  it('fails or hangs tasks on injected faults; a hung task cancels and leaves no recovery point', async () => {
    await sim.admin.addFaults([{ kind: 'taskFail', match: { path: '^CreateRecoveryPoint$' }, count: 1, message: 'Injected: snapshot service down' }]);
    const failed = await createRp('vm-0009', 'CRASH_CONSISTENT');
    expect(failed.task.status).toBe('FAILED');
    expect(failed.task.legacyErrorMessage).toBe('Injected: snapshot service down');

    await sim.admin.addFaults([{ kind: 'taskHang', match: { path: '^CreateRecoveryPoint$' }, count: 1 }]);
    const vm = await vmByName('vm-0009');
    const { body } = await conform(apiResponse(taskReferenceSchema), 'POST', `${dp}/config/recovery-points`, { body: { name: 'hung', vmRecoveryPoints: [{ vmExtId: vm.extId }] } });
    const taskPath = `/api/prism/v4.0/config/tasks/${body.data.extId}`;
    let task = (await conform(apiResponse(taskSchema), 'GET', taskPath)).body.data;
    for (let i = 0; task.status !== 'RUNNING' && i < 100; i++) task = (await conform(apiResponse(taskSchema), 'GET', taskPath)).body.data;
    expect(task).toMatchObject({ status: 'RUNNING', isCancelable: true });
    expect((await call(sim, 'POST', `${taskPath}/$actions/cancel`)).status).toBe(202);
    expect((await waitV4Task(sim, body.data.extId)).status).toBe('CANCELED');
    const state = await sim.admin.state();
    expect(state.recoveryPoints.filter((r) => r.vmExtIds.includes(vm.extId))).toEqual([]);
    expect(state.tasks.unfinished).toBe(0);
  });
});

describe('v4 changed regions', () => {
  it('discover-cluster gives a JWT that alone authorises CRT; full plan covers every non-zero byte', async () => {
    const rp = await rpOf((await createRp('vm-0011', 'CRASH_CONSISTENT')).task);
    const cookie = await jwtFor(rp);
    const { regions, calls } = await allRegions(rp, 1, { blockSizeByte: 65536 }, cookie);
    expect(regions.length).toBeGreaterThan(pageRegions);
    expect(calls).toBe(Math.ceil(regions.length / pageRegions) + 1);
    expect(regions.map((r) => r.regionType)).toContain('ZEROED');
    // Disk 1 has an unaligned tail: the last region is clipped to the file size.
    const size = diskSize - 1536;
    for (const r of regions) expect(r.offset + r.length).toBeLessThanOrEqual(size);
    // Every byte outside REGULAR regions reads as zero in the live disk at snapshot time (no writes since).
    const file = await open(await sim.diskPath('vm-0011', 1), 'r');
    try {
      const content = Buffer.alloc(size);
      await file.read(content, 0, size, 0);
      for (const r of regions.filter((x) => x.regionType === 'REGULAR')) content.fill(0, r.offset, r.offset + r.length);
      expect(content.every((b) => b === 0)).toBe(true);
    } finally {
      await file.close();
    }
    // Without the JWT (no Basic, no cookie) the same call is refused.
    const vmrp = rp.vmRecoveryPoints[0];
    const anonymous = await call(sim, 'POST', `${dp}/content/recovery-points/${rp.extId}/vm-recovery-points/${vmrp?.extId}/disk-recovery-points/${vmrp?.diskRecoveryPoints[0]?.diskRecoveryPointExtId}/$actions/compute-changed-regions`, { body: {}, auth: false });
    expect(anonymous.status).toBe(401);
  });

  it('reports exactly the written blocks between two recovery points, aligned to the block size', async () => {
    const base = await rpOf((await createRp('vm-0013', 'CRASH_CONSISTENT')).task);
    const report = await sim.admin.write('vm-0013', 0, 3, 7);
    const next = await rpOf((await createRp('vm-0013', 'CRASH_CONSISTENT')).task);
    const cookie = await jwtFor(next);
    const ref = base.vmRecoveryPoints[0];
    const reference = { referenceRecoveryPointExtId: base.extId, referenceVmRecoveryPointExtId: ref?.extId, referenceDiskRecoveryPointExtId: ref?.diskRecoveryPoints[0]?.diskRecoveryPointExtId };
    const { regions } = await allRegions(next, 0, { blockSizeByte: 65536, ...reference }, cookie);
    const expected: Array<{ offset: number; length: number; regionType: string }> = [];
    for (const block of report.blocks) {
      const type = block.zero ? 'ZEROED' : 'REGULAR';
      const last = expected.at(-1);
      if (last && last.regionType === type && last.offset + last.length === block.offset) last.length += block.length;
      else expected.push({ offset: block.offset, length: block.length, regionType: type });
    }
    expect(regions.map(({ offset, length, regionType }) => ({ offset, length, regionType }))).toEqual(expected);

    const coarse = await allRegions(next, 0, { blockSizeByte: 262144, ...reference }, cookie);
    for (const r of coarse.regions) {
      expect(r.offset % 262144).toBe(0);
      expect(r.length % 262144).toBe(0);
    }
    for (const block of report.blocks) {
      expect(coarse.regions.some((r) => r.offset <= block.offset && block.offset + block.length <= r.offset + r.length)).toBe(true);
    }
    const bad = await conform(errorResponseSchema('dataprotection'), 'POST', `${dp}/content/recovery-points/${next.extId}/vm-recovery-points/${next.vmRecoveryPoints[0]?.extId}/disk-recovery-points/${next.vmRecoveryPoints[0]?.diskRecoveryPoints[0]?.diskRecoveryPointExtId}/$actions/compute-changed-regions`, {
      body: { blockSizeByte: 4096 },
    });
    expect(bad.res.status).toBe(400);
  });
});

describe('v3-only simulator', () => {
  it('answers 404 on v4 paths like an older Prism Central, and serves v3', async () => {
    const old = await startSim({ api: 'v3', vms: 3, iscsi: false });
    try {
      const v4 = await call(old, 'GET', '/api/vmm/v4.0/ahv/config/vms');
      expect(v4.status).toBe(404);
      expect(v4.body).toMatchObject({ message: expect.stringMatching(/requested URL was not found/) });
      const v3 = await call(old, 'POST', '/api/nutanix/v3/vms/list', { body: {} });
      expect((v3.body as { metadata: { total_matches: number } }).metadata.total_matches).toBe(3);
    } finally {
      await old.stop();
    }
  });
});
