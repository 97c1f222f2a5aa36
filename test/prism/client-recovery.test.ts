/**
 * Recovery points, changed regions and disk exports through the Prism client against the simulator, on a v4
 * Prism Central and on a v3-only one: the same product-level behaviour from both API generations.
 */
import { execFile } from 'node:child_process';
import { readFile, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/lib/log.ts';
import type { Region } from '../../src/mover/types.ts';
import { createPrismClient } from '../../src/prism/client.ts';
import type { PrismClient, RecoveryPoint, Vm } from '../../src/prism/types.ts';
import { type RunningSim, type WriteReport, startSim } from '../support/sim.ts';

const run = promisify(execFile);
const block = 64 * 1024;
/** qemu's default initiator name, so `qemu-img` can open the exported LUN without extra options. */
const qemuInitiator = 'iqn.2008-11.org.linux-kvm';

async function collect(regions: AsyncIterable<Region>): Promise<Region[]> {
  const out: Region[] = [];
  for await (const r of regions) out.push(r);
  return out;
}

/** Region list → type of every 64 KiB block it touches (the simulator's tracking unit). */
function blockTypes(regions: { offset: number; length: number; type: string }[]): Map<number, string> {
  const map = new Map<number, string>();
  for (const r of regions) {
    for (let b = Math.floor(r.offset / block); b * block < r.offset + r.length; b++) map.set(b, r.type);
  }
  return map;
}

function expectOrderedWithin(regions: Region[], size: number): void {
  let end = 0;
  for (const r of regions) {
    expect(r.offset).toBeGreaterThanOrEqual(end);
    expect(r.length).toBeGreaterThan(0);
    end = r.offset + r.length;
  }
  expect(end).toBeLessThanOrEqual(size);
}

describe.each(['v4', 'v3'] as const)('recovery points on a %s Prism Central', (api) => {
  let sim: RunningSim;
  let client: PrismClient;
  let vm: Vm;
  let first: RecoveryPoint;
  let second: RecoveryPoint;
  let written: WriteReport;

  beforeAll(async () => {
    // Few regions per CRT page, so paging is exercised.
    sim = await startSim({ api, vms: 4, disksPerVm: 2, diskSize: '16MiB', seed: 3, crtPageRegions: 4 });
    client = createPrismClient(
      { endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem },
      { logger: createLogger({ level: 'silent' }), taskWait: { timeoutMs: 60_000, pollMs: 50, maxPollMs: 200 } },
    );
    vm = await client.findVm('vm-0002');
  });
  afterAll(async () => {
    await client?.close();
    await sim?.stop();
  });

  it('creates a crash-consistent recovery point with one disk recovery point per real disk', async () => {
    first = await client.createRecoveryPoint({ vm, name: 'first', consistency: 'CRASH_CONSISTENT', requestId: `${api}-first` });
    expect(first).toMatchObject({ generation: api, name: 'first', vmUuid: vm.uuid, consistency: 'CRASH_CONSISTENT' });
    expect(first.disks.map((d) => d.diskUuid).sort()).toEqual(vm.disks.map((d) => d.uuid).sort());
    for (const d of first.disks) {
      if (api === 'v4') expect(d.diskRecoveryPointId).toBeTruthy();
      else expect((await stat(d.snapshotFilePath ?? '')).isFile()).toBe(true);
    }
  });

  it('skips looking for an earlier attempt when the request id is used for the first time', async () => {
    await sim.admin.resetCounters();
    const fresh = await client.createRecoveryPoint({ vm, name: 'fresh', consistency: 'CRASH_CONSISTENT', requestId: `${api}-fresh`, firstUse: true });
    const { byRoute } = await sim.admin.counters();
    expect(fresh).toMatchObject({ name: 'fresh', vmUuid: vm.uuid });
    expect(fresh.disks).toHaveLength(vm.disks.length);
    // v3 looks up neither the reservation nor the snapshot before creating it; v4 never looks anything up.
    expect(Object.keys(byRoute).filter((route) => route.startsWith('GET') && route.includes('idempotence_identifiers'))).toEqual([]);
    expect(byRoute['GET /api/nutanix/v3/vm_snapshots/{uuid}'] ?? 0).toBeLessThanOrEqual(1);
    await client.deleteRecoveryPoint(fresh.id);
  });

  it('does not create a second recovery point for the same request id', async () => {
    const before = await sim.admin.state();
    const again = await client.createRecoveryPoint({ vm, name: 'first', consistency: 'CRASH_CONSISTENT', requestId: `${api}-first` });
    expect(again.id).toBe(first.id);
    const after = await sim.admin.state();
    expect(after.recoveryPoints.length + after.vmSnapshots.length).toBe(before.recoveryPoints.length + before.vmSnapshots.length);
  });

  it('reads back what NGT allowed: application-consistent, silently downgraded, or refused', async () => {
    const app = await client.createRecoveryPoint({ vm, name: 'app', consistency: 'APPLICATION_CONSISTENT', requestId: `${api}-app` });
    expect(app.consistency).toBe('APPLICATION_CONSISTENT');
    // vm-0001 has no NGT: Prism makes a crash-consistent point instead.
    const noNgt = await client.findVm('vm-0001');
    const downgraded = await client.createRecoveryPoint({ vm: noNgt, name: 'down', consistency: 'APPLICATION_CONSISTENT', requestId: `${api}-down` });
    expect(downgraded.consistency).toBe('CRASH_CONSISTENT');
    // vm-0003's NGT is unreachable: the task fails with Prism's reason.
    const unreachable = await client.findVm('vm-0003');
    await expect(
      client.createRecoveryPoint({ vm: unreachable, name: 'refused', consistency: 'APPLICATION_CONSISTENT', requestId: `${api}-refused` }),
    ).rejects.toMatchObject({ code: 'TASK_FAILED', message: expect.stringMatching(/create recovery point "refused" of VM vm-0003: Prism task \S+ failed: .+/) });
    await client.deleteRecoveryPoint(app.id);
    await client.deleteRecoveryPoint(downgraded.id);
  });

  it('gets, lists and deletes recovery points; deleting one that is gone is fine', async () => {
    const extra = await client.createRecoveryPoint({ vm, name: 'extra', consistency: 'CRASH_CONSISTENT', requestId: `${api}-extra` });
    expect(await client.getRecoveryPoint(extra.id)).toEqual(extra);
    expect((await client.listRecoveryPoints({ vmUuid: vm.uuid })).map((p) => p.id).sort()).toEqual([first.id, extra.id].sort());
    await client.deleteRecoveryPoint(extra.id);
    expect(await client.getRecoveryPoint(extra.id)).toBeUndefined();
    await client.deleteRecoveryPoint(extra.id);
    expect((await client.listRecoveryPoints({ vmUuid: vm.uuid })).map((p) => p.id)).toEqual([first.id]);
  });

  it('pages changed regions to the end: the allocated data of a full plan, then exactly the guest writes', async () => {
    const disk0 = vm.disks[0];
    const firstDisk = first.disks.find((d) => d.diskUuid === disk0?.uuid);
    if (!disk0 || !firstDisk) throw new Error('disk 0 missing');
    const full = await collect(client.changedRegions({ recoveryPoint: first, disk: firstDisk }));
    expect(full.length).toBeGreaterThan(0);
    expectOrderedWithin(full, disk0.sizeBytes);
    // No guest write since `first`: every byte outside the REGULAR regions of the live disk is zero.
    const bytes = await readFile(await sim.diskPath('vm-0002', 0));
    expect(bytes.length).toBe(disk0.sizeBytes);
    let cursor = 0;
    const zeroOutside = (from: number, to: number) => expect(bytes.subarray(from, to).every((b) => b === 0)).toBe(true);
    for (const r of full) {
      zeroOutside(cursor, r.offset);
      if (r.type === 'ZEROED') zeroOutside(r.offset, r.offset + r.length);
      cursor = r.offset + r.length;
    }
    zeroOutside(cursor, bytes.length);

    written = await sim.admin.write('vm-0002', 0, 10, 42);
    second = await client.createRecoveryPoint({ vm, name: 'second', consistency: 'CRASH_CONSISTENT', requestId: `${api}-second` });
    const secondDisk = second.disks.find((d) => d.diskUuid === disk0.uuid);
    if (!secondDisk) throw new Error('disk 0 missing in second point');
    await sim.admin.resetCounters();
    const incremental = await collect(client.changedRegions({ recoveryPoint: second, disk: secondDisk, reference: { recoveryPoint: first, disk: firstDisk } }));
    expectOrderedWithin(incremental, disk0.sizeBytes);
    expect(blockTypes(incremental)).toEqual(blockTypes(written.blocks.map((b) => ({ offset: b.offset, length: b.length, type: b.zero ? 'ZEROED' : 'REGULAR' }))));
    const pages = Object.entries((await sim.admin.counters()).byRoute)
      .filter(([route]) => /changed_regions|compute-changed-regions/.test(route))
      .reduce((sum, [, n]) => sum + n, 0);
    // The simulator returns at most 4 regions a page: scattered writes take several pages.
    expect(incremental.length).toBeGreaterThan(8);
    expect(pages).toBeGreaterThanOrEqual(Math.ceil(incremental.length / 4));

    // A window: only regions inside [offset, offset + length).
    const window = await collect(
      client.changedRegions({ recoveryPoint: second, disk: secondDisk, reference: { recoveryPoint: first, disk: firstDisk }, offset: 4 * 1024 * 1024, length: 4 * 1024 * 1024 }),
    );
    expect(window).toEqual(incremental.flatMap((r) => {
      const from = Math.max(r.offset, 4 * 1024 * 1024);
      const to = Math.min(r.offset + r.length, 8 * 1024 * 1024);
      return to > from ? [{ offset: from, length: to - from, type: r.type }] : [];
    }));
  });

  it(`exports a disk recovery point as ${api === 'v4' ? 'an iSCSI LUN through a volume group' : 'the snapshot file'}, with the snapshot's bytes`, async () => {
    const disk0 = vm.disks[0];
    const secondDisk = second.disks.find((d) => d.diskUuid === disk0?.uuid);
    if (!disk0 || !secondDisk) throw new Error('disk 0 missing');
    const exported = await client.exportDisk({ recoveryPoint: second, disk: secondDisk, initiatorName: qemuInitiator });
    // No guest write since `second`: the live disk holds the same bytes as the exported snapshot.
    const live = await sim.diskPath('vm-0002', 0);
    try {
      if (api === 'v4') {
        expect(exported.kind).toBe('iscsi');
        if (exported.kind !== 'iscsi') return;
        expect(exported.url).toMatch(new RegExp(`^iscsi://${sim.dataServicesIp?.replaceAll('.', '\\.')}:3260/iqn\\.[^/]+/1$`));
        const info = JSON.parse((await run('qemu-img', ['info', '--output=json', exported.url])).stdout) as { 'virtual-size': number };
        expect(info['virtual-size']).toBe(disk0.sizeBytes);
        await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', live, exported.url]);
      } else {
        expect(exported).toMatchObject({ kind: 'file', path: secondDisk.snapshotFilePath });
        if (exported.kind !== 'file') return;
        expect((await stat(exported.path)).size).toBe(disk0.sizeBytes);
        await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', live, exported.path]);
      }
    } finally {
      await exported.release();
    }
    const state = await sim.admin.state();
    expect(state.volumeGroups).toEqual([]);
    expect(state.iscsiTargets).toEqual([]);
    // Releasing twice (e.g. after a crash-restart) is harmless.
    await exported.release();
  });
});
