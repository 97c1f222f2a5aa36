/** The Prism client under the simulator's injected faults: what it retries, what it surfaces, and how. */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/lib/log.ts';
import { createPrismClient, type PrismClientOptions } from '../../src/prism/client.ts';
import type { PrismClient, Vm } from '../../src/prism/types.ts';
import { type RunningSim, startSim } from '../support/sim.ts';

const fastRetries: PrismClientOptions = {
  logger: createLogger({ level: 'silent' }),
  retry: { baseDelayMs: 10, maxDelayMs: 200 },
  taskWait: { timeoutMs: 60_000, pollMs: 20, maxPollMs: 100 },
};

function route(byRoute: Record<string, number>, pattern: RegExp): number {
  return Object.entries(byRoute)
    .filter(([r]) => pattern.test(r))
    .reduce((sum, [, n]) => sum + n, 0);
}

describe.each(['v4', 'v3'] as const)('faults on a %s Prism Central', (api) => {
  let sim: RunningSim;
  let client: PrismClient;
  let vm: Vm;
  const listRoute = api === 'v4' ? /^GET \/api\/vmm\/v4\.0\/ahv\/config\/vms$/ : /^POST \/api\/nutanix\/v3\/vms\/list$/;
  const listPath = api === 'v4' ? '^/api/vmm/v4\\.0/ahv/config/vms$' : '^/api/nutanix/v3/vms/list$';
  const listMethod = api === 'v4' ? 'GET' : 'POST';
  const createPath = api === 'v4' ? '^/api/dataprotection/v4\\.0/config/recovery-points$' : '^/api/nutanix/v3/vm_snapshots$';

  beforeAll(async () => {
    sim = await startSim({ api, vms: 250, disksPerVm: 1 });
    client = createPrismClient({ endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem }, fastRetries);
    vm = await client.findVm('vm-0002');
  });
  afterEach(async () => {
    await sim.admin.clearFaults();
  });
  afterAll(async () => {
    await client?.close();
    await sim?.stop();
  });

  it('waits out a 429 storm (Retry-After / X-Ratelimit-Reset) and completes the listing', async () => {
    await sim.admin.resetCounters();
    await sim.admin.addFaults([{ kind: 'rateLimit', match: { method: listMethod, path: listPath }, count: 3, retryAfterSeconds: 1 }]);
    const vms = await client.listVms();
    expect(vms).toHaveLength(250);
    const pages = api === 'v4' ? 3 : 1;
    expect(route((await sim.admin.counters()).byRoute, listRoute)).toBe(pages + 3);
  });

  it('retries 503s and a dropped connection on reads', async () => {
    await sim.admin.resetCounters();
    await sim.admin.addFaults([
      { kind: 'unavailable', match: { method: listMethod, path: listPath }, count: 2 },
      { kind: 'drop', match: { method: 'GET', path: api === 'v4' ? '^/api/vmm/v4\\.0/ahv/config/vms/' : '^/api/nutanix/v3/vms/' }, count: 1 },
    ]);
    expect(await client.listVms()).toHaveLength(250);
    expect((await client.getVm(vm.uuid)).name).toBe('vm-0002');
    const { byRoute } = await sim.admin.counters();
    expect(route(byRoute, listRoute)).toBe((api === 'v4' ? 3 : 1) + 2);
    expect(route(byRoute, /vms\/\{/)).toBe(2);
  });

  it('gives up on a persistent 503 with a retryable Unavailable error', async () => {
    await sim.admin.addFaults([{ kind: 'unavailable', match: { method: listMethod, path: listPath } }]);
    await expect(client.listVms()).rejects.toMatchObject({ code: 'UNAVAILABLE', retryable: true, message: expect.stringContaining('HTTP 503') });
  });

  it('retries a rate-limited create that carries an idempotency key, creating exactly one recovery point', async () => {
    const before = await sim.admin.state();
    await sim.admin.addFaults([{ kind: 'rateLimit', match: { method: 'POST', path: createPath }, count: 2, retryAfterSeconds: 0 }]);
    const point = await client.createRecoveryPoint({ vm, name: 'after-429', consistency: 'CRASH_CONSISTENT', requestId: `${api}-429` });
    const after = await sim.admin.state();
    expect(after.recoveryPoints.length + after.vmSnapshots.length).toBe(before.recoveryPoints.length + before.vmSnapshots.length + 1);
    await client.deleteRecoveryPoint(point.id);
  });

  it('logs in again when the session expires between calls', async () => {
    await client.listVms();
    await sim.admin.expireSessions();
    expect((await client.getVm(vm.uuid)).uuid).toBe(vm.uuid);
    await sim.admin.expireSessions();
    expect(await client.listVms()).toHaveLength(250);
  });

  it('logs in again when the session expires in the middle of a paged listing', async () => {
    await sim.admin.resetCounters();
    // Slow pages, so the expiry lands while the listing is running.
    await sim.admin.addFaults([{ kind: 'latency', match: { method: listMethod, path: listPath }, ms: 300, count: 3 }]);
    const listing = client.listVms();
    while (route((await sim.admin.counters()).byRoute, listRoute) < 1) await new Promise((r) => setTimeout(r, 20));
    await sim.admin.expireSessions();
    expect(await listing).toHaveLength(250);
  });

  it('turns a failed Prism task into TaskFailed with the Nutanix message', async () => {
    await sim.admin.addFaults([{ kind: 'taskFail', count: 1, message: 'Injected: snapshot quota exceeded' }]);
    await expect(client.createRecoveryPoint({ vm, name: 'doomed', consistency: 'CRASH_CONSISTENT', requestId: `${api}-doomed` })).rejects.toMatchObject({
      code: 'TASK_FAILED',
      retryable: false,
      message: expect.stringContaining('Injected: snapshot quota exceeded'),
    });
  });

  it('stops waiting for a task that never finishes: a timeout, or the caller aborting', async () => {
    const impatient = createPrismClient(
      { endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem },
      { ...fastRetries, taskWait: { timeoutMs: 500, pollMs: 20, maxPollMs: 100 } },
    );
    try {
      await sim.admin.addFaults([{ kind: 'taskHang', count: 2 }]);
      await expect(impatient.createRecoveryPoint({ vm, name: 'hung', consistency: 'CRASH_CONSISTENT', requestId: `${api}-hung` })).rejects.toMatchObject({
        code: 'TIMEOUT',
        retryable: true,
        message: expect.stringMatching(/did not finish within/),
      });
      const controller = new AbortController();
      const pending = client.createRecoveryPoint({ vm, name: 'aborted', consistency: 'CRASH_CONSISTENT', requestId: `${api}-aborted`, signal: controller.signal });
      setTimeout(() => controller.abort(new Error('operator cancelled the backup')), 300);
      await expect(pending).rejects.toMatchObject({ code: 'ABORTED', message: expect.stringContaining('operator cancelled the backup') });
    } finally {
      await impatient.close();
    }
  });

  it('aborts a call that is waiting on a slow response', async () => {
    await sim.admin.addFaults([{ kind: 'latency', match: { path: listPath }, ms: 30_000, count: 1 }]);
    await expect(client.listVms({ signal: AbortSignal.timeout(200) })).rejects.toMatchObject({ code: 'ABORTED' });
  });
});
