/** The Prism client lists and finds VMs on the simulator, v4 and v3-only, paging through 2,000 VMs. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/lib/log.ts';
import { createPrismClient } from '../../src/prism/client.ts';
import type { PrismClient, Vm } from '../../src/prism/types.ts';
import { type RunningSim, startSim } from '../support/sim.ts';

const vmCount = 2000;
const silent = createLogger({ level: 'silent' });

function clientFor(sim: RunningSim): PrismClient {
  return createPrismClient({ endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem }, { logger: silent });
}

/** What both API generations must agree on for the same simulated inventory. */
function essence(vm: Vm) {
  return {
    uuid: vm.uuid,
    name: vm.name,
    cluster: vm.cluster.uuid,
    powerState: vm.powerState,
    ngt: vm.ngt,
    categories: vm.categories,
    disks: vm.disks.map((d) => ({ uuid: d.uuid, index: d.index, busType: d.busType, deviceIndex: d.deviceIndex, sizeBytes: d.sizeBytes, container: d.container?.uuid })),
  };
}

describe.each(['v4', 'v3'] as const)('listing VMs on a %s Prism Central', (api) => {
  let sim: RunningSim;
  let client: PrismClient;
  let vms: Vm[];

  beforeAll(async () => {
    sim = await startSim({ api, vms: vmCount, disksPerVm: 2, seed: 7, clusters: 2 });
    client = clientFor(sim);
    await client.capabilities();
    await sim.admin.resetCounters();
    vms = await client.listVms();
  });
  afterAll(async () => {
    await client?.close();
    await sim?.stop();
  });

  it('discovers the API generation', async () => {
    const caps = await client.capabilities();
    expect(caps.preferred).toBe(api);
    expect(caps.apiGenerations).toEqual(api === 'v4' ? ['v4', 'v3'] : ['v3']);
    expect(caps.clusters.filter((c) => c.isPrismCentral)).toHaveLength(1);
    const aos = caps.clusters.filter((c) => !c.isPrismCentral);
    expect(aos).toHaveLength(2);
    for (const c of aos) expect(c.dataServicesIp).toBe(sim.dataServicesIp);
    expect(caps.pcVersion).toBeTruthy();
  });

  it(`lists all ${vmCount} VMs with page requests only, no per-VM GETs`, async () => {
    expect(vms).toHaveLength(vmCount);
    expect(new Set(vms.map((vm) => vm.uuid)).size).toBe(vmCount);
    expect(new Set(vms.map((vm) => vm.name))).toEqual(new Set(Array.from({ length: vmCount }, (_, i) => `vm-${String(i + 1).padStart(4, '0')}`)));
    const { byRoute } = await sim.admin.counters();
    const routes = Object.keys(byRoute);
    if (api === 'v4') {
      // $limit 100: 20 pages.
      expect(byRoute['GET /api/vmm/v4.0/ahv/config/vms']).toBe(vmCount / 100);
    } else {
      // length 500: 4 pages.
      expect(byRoute['POST /api/nutanix/v3/vms/list']).toBe(vmCount / 500);
    }
    expect(routes.filter((r) => /vms\/\{/.test(r))).toEqual([]);
  });

  it('keeps only real disks (no CD-ROMs, no volume-group devices), numbered by bus and index', () => {
    for (const vm of vms) {
      expect(vm.disks.map((d) => d.index)).toEqual([0, 1]);
      expect(vm.disks.map((d) => [d.busType, d.deviceIndex])).toEqual([
        ['SCSI', 0],
        ['SCSI', 1],
      ]);
      // The last disk is 1536 bytes short of 16 MiB (unaligned tail).
      expect(vm.disks.map((d) => d.sizeBytes)).toEqual([16 * 1024 * 1024, 16 * 1024 * 1024 - 1536]);
    }
  });

  it('reads NGT state and categories', () => {
    const byName = new Map(vms.map((vm) => [vm.name, vm]));
    expect(byName.get('vm-0002')?.ngt).toMatchObject({ installed: true, enabled: true, reachable: true, vssSnapshotCapable: true });
    expect(byName.get('vm-0001')?.ngt.installed).toBe(false);
    expect(byName.get('vm-0003')?.ngt).toMatchObject({ installed: true, reachable: false });
    for (const vm of vms) expect(Object.keys(vm.categories).sort()).toEqual(['AppType', 'Environment']);
  });

  it('finds a VM by name and by UUID, and names a missing one', async () => {
    const target = vms.find((vm) => vm.name === 'vm-1234');
    expect(target).toBeDefined();
    const byName = await client.findVm('vm-1234');
    const byUuid = await client.findVm(target?.uuid ?? '');
    expect(essence(byName)).toEqual(essence(target as Vm));
    expect(essence(byUuid)).toEqual(essence(target as Vm));
    await expect(client.findVm('vm-9999')).rejects.toMatchObject({ code: 'NOT_FOUND', message: 'no VM is named "vm-9999"' });
    await expect(client.findVm('5b0c2d3e-0000-4000-8000-000000000000')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});

describe('v3 and v4 views of the same inventory', () => {
  it('agree VM by VM', async () => {
    const [v4, v3] = await Promise.all([startSim({ api: 'v4', vms: 30, seed: 11 }), startSim({ api: 'v3', vms: 30, seed: 11 })]);
    const clients = [clientFor(v4), clientFor(v3)];
    try {
      const [fromV4, fromV3] = await Promise.all(clients.map((c) => c.listVms()));
      const sorted = (list: Vm[] | undefined) => (list ?? []).map(essence).sort((a, b) => a.name.localeCompare(b.name));
      expect(sorted(fromV4)).toHaveLength(30);
      expect(sorted(fromV4)).toEqual(sorted(fromV3));
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await Promise.all([v4.stop(), v3.stop()]);
    }
  });
});
