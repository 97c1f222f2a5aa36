/** Authentication, sessions, the read-only viewer, fault injection and request counters. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSim, type RunningSim } from '../test/support/sim.ts';
import { errorResponseSchema } from './schemas/v4.ts';
import { call, loadSwaggerValidators, type SwaggerValidator } from './testkit.ts';

let sim: RunningSim;
let pc: SwaggerValidator;
let pe: SwaggerValidator;

const list = '/api/nutanix/v3/vms/list';

beforeAll(async () => {
  [sim, { pc, pe }] = await Promise.all([
    // A fault given at start: the very first request to vms/list answers 503.
    startSim({ vms: 5, sessionTtl: '1s', faults: [{ kind: 'unavailable', match: { path: '/vms/list$' }, count: 1 }] }),
    loadSwaggerValidators(),
  ]);
});

afterAll(async () => {
  await sim?.stop();
});

describe('faults', () => {
  it('applies start-up faults, then 429 with rate-limit headers, 503, dropped connections', async () => {
    const first = await call(sim, 'POST', list, { body: {} });
    expect(first.status).toBe(503);
    expect(pc.validate('POST', '/vms/list', 503, first.body)).toEqual([]);
    expect(first.body).toMatchObject({ code: 503, message_list: [{ reason: 'SERVICE_UNAVAILABLE' }] });
    expect((await call(sim, 'POST', list, { body: {} })).status).toBe(200);

    await sim.admin.addFaults([{ kind: 'rateLimit', match: { path: '/vms/list$' }, count: 2, retryAfterSeconds: 3 }]);
    for (let i = 0; i < 2; i++) {
      const limited = await call(sim, 'POST', list, { body: {} });
      expect(limited.status).toBe(429);
      expect(limited.headers).toMatchObject({ 'x-ratelimit-limit': '40', 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '3', 'retry-after': '3' });
      expect(pc.validate('POST', '/vms/list', 429, limited.body)).toEqual([]);
      expect(limited.body).toMatchObject({ message_list: [{ reason: 'TOO_MANY_REQUESTS' }] });
    }
    expect((await call(sim, 'POST', list, { body: {} })).status).toBe(200);

    await sim.admin.addFaults([{ kind: 'rateLimit', match: { path: '^/api/vmm/' }, count: 1 }]);
    const v4Limited = await call(sim, 'GET', '/api/vmm/v4.0/ahv/config/vms');
    expect(v4Limited.status).toBe(429);
    errorResponseSchema('vmm').parse(v4Limited.body);

    await sim.admin.addFaults([{ kind: 'drop', match: { path: '/clusters/list$' }, count: 1 }]);
    await expect(call(sim, 'POST', '/api/nutanix/v3/clusters/list', { body: {} })).rejects.toThrow(/socket hang up|ECONNRESET/);
    expect((await call(sim, 'POST', '/api/nutanix/v3/clusters/list', { body: {} })).status).toBe(200);
  });

  it('delays without failing on latency rules; a rule without count lasts until cleared', async () => {
    await sim.admin.addFaults([{ kind: 'latency', ms: 50, match: { path: '/clusters/list$' }, count: 1 }]);
    expect((await call(sim, 'POST', '/api/nutanix/v3/clusters/list', { body: {} })).status).toBe(200);
    await sim.admin.addFaults([{ kind: 'unavailable', match: { method: 'POST', path: '/clusters/list$' } }]);
    for (let i = 0; i < 3; i++) expect((await call(sim, 'POST', '/api/nutanix/v3/clusters/list', { body: {} })).status).toBe(503);
    await sim.admin.clearFaults();
    expect((await call(sim, 'POST', '/api/nutanix/v3/clusters/list', { body: {} })).status).toBe(200);
  });

  it('counts requests per route template', async () => {
    await sim.admin.resetCounters();
    const vms = (await call(sim, 'POST', list, { body: {} })).body as { entities: Array<{ metadata: { uuid: string } }> };
    for (const vm of vms.entities.slice(0, 3)) await call(sim, 'GET', `/api/nutanix/v3/vms/${vm.metadata.uuid}`);
    const counters = await sim.admin.counters();
    expect(counters.byRoute).toEqual({ 'POST /api/nutanix/v3/vms/list': 1, 'GET /api/nutanix/v3/vms/{uuid}': 3 });
    expect(counters.total).toBe(4);
  });
});

describe('authentication and sessions', () => {
  it('answers a wrong password with the recorded 401 body', async () => {
    const res = await call(sim, 'POST', list, { body: {}, auth: { username: sim.username, password: 'wrong' } });
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe('Basic realm="Intent Gateway Login Required"');
    expect(res.body).toEqual({
      state: 'ERROR',
      code: 401,
      message_list: [{ reason: 'AUTHENTICATION_REQUIRED', message: 'Authentication required.', details: 'Basic realm="Intent Gateway Login Required"' }],
      api_version: '3.1',
    });
  });

  it('issues a session cookie on Basic login that works alone until it expires or is revoked', async () => {
    const login = await call(sim, 'GET', '/api/nutanix/v3/users/me');
    expect(login.status).toBe(200);
    const cookie = String(login.headers['set-cookie']?.[0]).split(';')[0] ?? '';
    expect(cookie).toMatch(/^NTNX_IGW_SESSION=.+/);
    expect((await call(sim, 'POST', list, { body: {}, auth: false, cookie })).status).toBe(200);
    await sim.admin.expireSessions();
    expect((await call(sim, 'POST', list, { body: {}, auth: false, cookie })).status).toBe(401);

    const again = String((await call(sim, 'GET', '/api/nutanix/v3/users/me')).headers['set-cookie']?.[0]).split(';')[0] ?? '';
    expect((await call(sim, 'POST', list, { body: {}, auth: false, cookie: again })).status).toBe(200);
    // --session-ttl 1s: after it the cookie alone no longer authenticates, Basic does.
    await new Promise((r) => setTimeout(r, 1200));
    expect((await call(sim, 'POST', list, { body: {}, auth: false, cookie: again })).status).toBe(401);
    expect((await call(sim, 'POST', list, { body: {} })).status).toBe(200);
  });

  it('gives the viewer read access but 403 ACCESS_DENIED on writes, snapshots and recovery points', async () => {
    const viewer = { username: sim.viewerUsername, password: sim.password };
    const vms = await call(sim, 'POST', list, { body: {}, auth: viewer });
    expect(vms.status).toBe(200);
    const vmUuid = (vms.body as { entities: Array<{ metadata: { uuid: string } }> }).entities[0]?.metadata.uuid;

    const snap = await call(sim, 'POST', '/api/nutanix/v3/vm_snapshots', { auth: viewer, body: { metadata: { kind: 'vm_snapshot' }, spec: { resources: { entity_uuid: vmUuid } } } });
    expect(snap.status).toBe(403);
    expect(pe.validate('POST', '/vm_snapshots', 403, snap.body)).toEqual([]);
    expect(snap.body).toMatchObject({ api_version: '3.1', code: 403, state: 'ERROR', message_list: [{ reason: 'ACCESS_DENIED', message: expect.stringMatching(/^No permission to access the resource/) }] });
    const crt = await call(sim, 'POST', '/api/nutanix/v3/data/changed_regions', { auth: viewer, body: { snapshot_file_path: '/x' } });
    expect(crt.status).toBe(403);

    const rpList = await call(sim, 'GET', '/api/dataprotection/v4.0/config/recovery-points', { auth: viewer });
    expect(rpList.status).toBe(403);
    expect(errorResponseSchema('dataprotection').parse(rpList.body).data.error[0]?.errorGroup).toBe('ACCESS_DENIED');
    const rpCreate = await call(sim, 'POST', '/api/dataprotection/v4.0/config/recovery-points', { auth: viewer, body: { vmRecoveryPoints: [{ vmExtId: vmUuid }] } });
    expect(rpCreate.status).toBe(403);
    expect((await call(sim, 'GET', '/api/vmm/v4.0/ahv/config/vms', { auth: viewer })).status).toBe(200);
    expect((await sim.admin.state()).recoveryPoints).toEqual([]);
  });
});
