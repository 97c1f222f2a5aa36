/**
 * The shared VM inventory against the real Prism simulator (HTTPS, paging, sessions): many concurrent callers
 * cause one paged listing and no per-VM GET; the TTL and a credential rotation start a new listing; a failed
 * listing is not cached.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAppError } from '../lib/errors.ts';
import { createPrismClient } from '../prism/client.ts';
import type { PrismClient, PrismConnection } from '../prism/types.ts';
import { startSim, type RunningSim } from '../../test/support/sim.ts';
import { VmInventory } from './inventory.ts';

describe('VmInventory', () => {
  let sim: RunningSim;
  let connection: PrismConnection;
  let client: PrismClient;
  const signal = (): AbortSignal => AbortSignal.timeout(30_000);

  beforeAll(async () => {
    sim = await startSim({ vms: 230, disksPerVm: 1, diskSize: '1MiB' });
    connection = { endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem };
    client = createPrismClient(connection);
  });
  afterAll(async () => {
    await client?.close();
    await sim?.stop();
  });

  /** Prism requests per route since the last reset, without the login routes. */
  const vmRequests = async (): Promise<Record<string, number>> => {
    const { byRoute } = await sim.admin.counters();
    return Object.fromEntries(Object.entries(byRoute).filter(([route]) => /vms/i.test(route)));
  };

  it('20 concurrent callers share one paged listing, with no GET per VM', async () => {
    const inventory = new VmInventory();
    await sim.admin.resetCounters();
    const snapshots = await Promise.all(Array.from({ length: 20 }, () => inventory.vms('ns/prism', connection, client, signal())));
    expect(inventory.listings).toBe(1);
    expect(new Set(snapshots).size).toBe(1);
    expect(snapshots[0]?.vms).toHaveLength(230);
    const routes = await vmRequests();
    const perVm = Object.entries(routes).filter(([route]) => /vms\/[^/]+$/.test(route) || /\{.*\}/.test(route));
    expect(perVm).toEqual([]);
    // 230 VMs need several pages; each page is one list request.
    expect(Object.values(routes).reduce((a, b) => a + b, 0)).toBeGreaterThan(1);
    expect(Object.values(routes).reduce((a, b) => a + b, 0)).toBeLessThan(10);
  });

  it('lists again after the TTL, and not before', async () => {
    let clock = 1_000_000;
    const inventory = new VmInventory({ ttlMs: 60_000, now: () => clock });
    await inventory.vms('ns/prism', connection, client, signal());
    clock += 59_000;
    await inventory.vms('ns/prism', connection, client, signal());
    expect(inventory.listings).toBe(1);
    clock += 2_000;
    await inventory.vms('ns/prism', connection, client, signal());
    expect(inventory.listings).toBe(2);
  });

  it('rotated credentials start a new listing; a failed listing reaches every waiter and is not cached', async () => {
    const inventory = new VmInventory();
    await inventory.vms('ns/prism', connection, client, signal());
    const wrong = { ...connection, password: 'not-the-password' };
    const wrongClient = createPrismClient(wrong);
    try {
      const results = await Promise.allSettled([1, 2, 3].map(() => inventory.vms('ns/prism', wrong, wrongClient, signal())));
      expect(inventory.listings).toBe(2);
      for (const r of results) {
        expect(r.status).toBe('rejected');
        if (r.status === 'rejected') expect(isAppError(r.reason) && r.reason.code).toBe('UNAUTHENTICATED');
      }
      await expect(inventory.vms('ns/prism', wrong, wrongClient, signal())).rejects.toThrow();
      expect(inventory.listings).toBe(3);
    } finally {
      await wrongClient.close();
    }
    const again = await inventory.vms('ns/prism', connection, client, signal());
    expect(again.vms).toHaveLength(230);
    expect(inventory.listings).toBe(4);
  });

  it("an aborted caller stops waiting without failing the others' listing", async () => {
    const inventory = new VmInventory();
    const abort = new AbortController();
    const first = inventory.vms('ns/prism', connection, client, abort.signal);
    const second = inventory.vms('ns/prism', connection, client, signal());
    abort.abort(new Error('reconcile cancelled'));
    await expect(first).rejects.toThrow(/reconcile cancelled/);
    expect((await second).vms).toHaveLength(230);
    expect(inventory.listings).toBe(1);
  });
});
