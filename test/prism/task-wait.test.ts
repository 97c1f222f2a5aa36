/**
 * Waiting for Prism tasks against the simulator with slow tasks (--task-duration per operation): v3 waits with one
 * long poll (`tasks/poll`) instead of a series of GETs, and a slow task still ends the wait as soon as it ends.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/lib/log.ts';
import { createPrismClient } from '../../src/prism/client.ts';
import type { PrismClient } from '../../src/prism/types.ts';
import { type RunningSim, startSim } from '../support/sim.ts';

describe('waiting for a slow v3 task', () => {
  let sim: RunningSim;
  let client: PrismClient;

  beforeAll(async () => {
    sim = await startSim({ api: 'v3', vms: 2, disksPerVm: 1, taskDuration: 'vm_snapshot_create=1500ms,vm_snapshot_delete=1500ms' });
    client = createPrismClient({ endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem }, { logger: createLogger({ level: 'silent' }) });
  });
  afterAll(async () => {
    await client?.close();
    await sim?.stop();
  });

  it('costs one tasks/poll request per task and no task GETs', async () => {
    const vm = await client.findVm('vm-0001');
    await sim.admin.resetCounters();
    const point = await client.createRecoveryPoint({ vm, name: 'slow', consistency: 'CRASH_CONSISTENT', requestId: 'slow-task' });
    await client.deleteRecoveryPoint(point.id);
    const { byRoute } = await sim.admin.counters();
    expect(byRoute['POST /api/nutanix/v3/tasks/poll']).toBe(2);
    expect(Object.keys(byRoute).filter((route) => route.startsWith('GET /api/nutanix/v3/tasks/'))).toEqual([]);
    expect((await sim.admin.state()).vmSnapshots).toEqual([]);
  });
});
