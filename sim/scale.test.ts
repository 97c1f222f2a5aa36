/** 2,000 VMs over 3 clusters stay cheap: disks are created lazily, listing pages through v3 (500) and v4 (100). */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSim, type RunningSim } from '../test/support/sim.ts';
import { call } from './testkit.ts';

let sim: RunningSim;

beforeAll(async () => {
  sim = await startSim({ vms: 2000, clusters: 3, diskSize: '1GiB', iscsi: false });
});

afterAll(async () => {
  await sim?.stop();
});

describe('2,000 VMs', () => {
  it('lists every VM exactly once through v3 pages of 500 and v4 pages of 100, creating no disk files', async () => {
    const v3 = new Set<string>();
    for (let offset = 0; ; offset += 500) {
      const body = (await call(sim, 'POST', '/api/nutanix/v3/vms/list', { body: { kind: 'vm', offset, length: 500 } })).body as {
        metadata: { total_matches: number };
        entities: Array<{ metadata: { uuid: string }; spec: { cluster_reference: { uuid: string } } }>;
      };
      expect(body.metadata.total_matches).toBe(2000);
      for (const e of body.entities) v3.add(e.metadata.uuid);
      if (offset + 500 >= body.metadata.total_matches) break;
    }
    expect(v3.size).toBe(2000);

    const v4 = new Set<string>();
    const clusters = new Set<string>();
    let pages = 0;
    for (let page = 0; ; page++) {
      const body = (await call(sim, 'GET', `/api/vmm/v4.0/ahv/config/vms?$page=${page}&$limit=100`)).body as {
        data: Array<{ extId: string; cluster: { extId: string } }>;
        metadata: { links: Array<{ rel: string }> };
      };
      pages++;
      for (const vm of body.data) {
        v4.add(vm.extId);
        clusters.add(vm.cluster.extId);
      }
      if (!body.metadata.links.some((l) => l.rel === 'next')) break;
    }
    expect(pages).toBe(20);
    expect(v4).toEqual(v3);
    expect(clusters.size).toBe(3);
    const disks = await readdir(join(sim.dataDir, 'disks')).catch(() => []);
    expect(disks).toEqual([]);
  });
});
