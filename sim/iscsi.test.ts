/** Volume groups export disk recovery points as real read-only iSCSI LUNs through the simulator's own tgtd. */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startSim, type RunningSim } from '../test/support/sim.ts';
import { apiResponse, iscsiClientSchema, recoveryPointSchema, taskReferenceSchema, volumeDiskSchema, volumeGroupSchema } from './schemas/v4.ts';
import { call, waitV4Task } from './testkit.ts';

const execFileAsync = promisify(execFile);
/** qemu's default initiator name when none is configured. */
const qemuInitiator = 'iqn.2008-11.org.linux-kvm';
const vol = '/api/volumes/v4.0/config/volume-groups';

let sim: RunningSim;

async function task(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Record<string, unknown>> {
  const res = await call(sim, method, path, { body, headers });
  expect(res.status, res.text).toBe(202);
  const ref = apiResponse(taskReferenceSchema).parse(res.body);
  const done = await waitV4Task(sim, ref.data.extId);
  expect(done.status, JSON.stringify(done.errorMessages)).toBe('SUCCEEDED');
  return done;
}

function completion(done: Record<string, unknown>, name: string): string {
  return (done.completionDetails as Array<{ name: string; value: string }>).find((d) => d.name === name)?.value ?? '';
}

beforeAll(async () => {
  sim = await startSim({ vms: 3, diskSize: '16MiB' });
});

afterAll(async () => {
  await sim?.stop();
});

describe('iSCSI export of a disk recovery point', () => {
  it('attach makes the frozen snapshot readable as iscsi://<data services ip>/<iqn>/1; detach and delete remove it', async () => {
    expect(sim.dataServicesIp).toMatch(/^127\.\d+\.\d+\.\d+$/);
    const vm = (await call(sim, 'POST', '/api/nutanix/v3/vms/list', { body: { filter: 'vm_name==vm-0002' } })).body as { entities: Array<{ metadata: { uuid: string } }> };
    const rpTask = await task('POST', '/api/dataprotection/v4.0/config/recovery-points', { name: 'for-iscsi', vmRecoveryPoints: [{ vmExtId: vm.entities[0]?.metadata.uuid }] });
    const rp = apiResponse(recoveryPointSchema).parse((await call(sim, 'GET', `/api/dataprotection/v4.0/config/recovery-points/${completion(rpTask, 'recoveryPointExtId')}`)).body).data;
    const drp = rp.vmRecoveryPoints[0]?.diskRecoveryPoints[1];
    const snapshotFile = `${sim.dataDir}/snapshots/${rp.extId}/${drp?.diskExtId}`;
    // The guest keeps writing after the recovery point: the LUN must still show the frozen content.
    await sim.admin.write('vm-0002', 1, 20);

    const vgId = completion(await task('POST', vol, { name: 'Backup VG 1' }), 'volumeGroupExtId');
    await task('POST', `${vol}/${vgId}/disks`, { diskDataSourceReference: { entityType: 'DISK_RECOVERY_POINT', extId: drp?.diskRecoveryPointExtId } });
    const disks = apiResponse(z.array(volumeDiskSchema)).parse((await call(sim, 'GET', `${vol}/${vgId}/disks`)).body).data;
    expect(disks.map((d) => d.diskDataSourceReference.extId)).toEqual([drp?.diskRecoveryPointExtId]);
    await task('POST', `${vol}/${vgId}/$actions/attach-iscsi-client`, { iscsiInitiatorName: qemuInitiator });

    const vg = apiResponse(volumeGroupSchema).parse((await call(sim, 'GET', `${vol}/${vgId}`)).body).data;
    const url = `iscsi://${sim.dataServicesIp}:3260/iqn.2010-06.com.nutanix:${vg.targetName}/1`;
    const info = JSON.parse((await execFileAsync('qemu-img', ['info', '--output=json', url])).stdout) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(16 * 1024 * 1024 - 1536);
    const compared = await execFileAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', snapshotFile, url]);
    expect(compared.stdout).toMatch(/Images are identical/);
    const live = await sim.diskPath('vm-0002', 1);
    // qemu-img compare exits 1 when the images differ.
    await expect(execFileAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', live, url])).rejects.toMatchObject({ code: 1, stdout: expect.stringMatching(/Content mismatch/) });
    // Read-only LUN.
    await expect(execFileAsync('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', url])).rejects.toThrow(/write protected|Permission|read-only/i);
    expect((await sim.admin.state()).iscsiTargets.map((t) => t.iqn)).toEqual([`iqn.2010-06.com.nutanix:${vg.targetName}`]);

    // The initiator is now an iSCSI client whose attachedTargets name the target; detach goes by its extId (SDK shape).
    const clients = apiResponse(z.array(iscsiClientSchema)).parse(
      (await call(sim, 'GET', `/api/volumes/v4.0/config/iscsi-clients?$filter=${encodeURIComponent(`iscsiInitiatorName eq '${qemuInitiator}'`)}`)).body,
    ).data;
    expect(clients.map((c) => c.attachedTargets.map((t) => t.iscsiTargetName))).toEqual([[`iqn.2010-06.com.nutanix:${vg.targetName}`]]);
    await task('POST', `${vol}/${vgId}/$actions/detach-iscsi-client`, { extId: clients[0]?.extId });
    expect((await sim.admin.state()).iscsiTargets).toEqual([]);
    await expect(execFileAsync('qemu-img', ['info', url])).rejects.toThrow();

    const etag = (await call(sim, 'GET', `${vol}/${vgId}`)).headers.etag ?? '';
    await task('DELETE', `${vol}/${vgId}`, undefined, { 'If-Match': etag });
    const state = await sim.admin.state();
    expect(state.volumeGroups).toEqual([]);
    expect(state.iscsiTargets).toEqual([]);
  });

  it('refuses initiators that were not attached', async () => {
    const vm = (await call(sim, 'POST', '/api/nutanix/v3/vms/list', { body: { filter: 'vm_name==vm-0003' } })).body as { entities: Array<{ metadata: { uuid: string } }> };
    const rpTask = await task('POST', '/api/dataprotection/v4.0/config/recovery-points', { name: 'acl', vmRecoveryPoints: [{ vmExtId: vm.entities[0]?.metadata.uuid }] });
    const rp = apiResponse(recoveryPointSchema).parse((await call(sim, 'GET', `/api/dataprotection/v4.0/config/recovery-points/${completion(rpTask, 'recoveryPointExtId')}`)).body).data;
    const vgId = completion(await task('POST', vol, { name: 'acl-vg' }), 'volumeGroupExtId');
    await task('POST', `${vol}/${vgId}/disks`, { diskDataSourceReference: { entityType: 'DISK_RECOVERY_POINT', extId: rp.vmRecoveryPoints[0]?.diskRecoveryPoints[0]?.diskRecoveryPointExtId } });
    await task('POST', `${vol}/${vgId}/$actions/attach-iscsi-client`, { iscsiInitiatorName: 'iqn.2024-01.io.sendense:someone-else' });
    const vg = apiResponse(volumeGroupSchema).parse((await call(sim, 'GET', `${vol}/${vgId}`)).body).data;
    await expect(execFileAsync('qemu-img', ['info', `iscsi://${sim.dataServicesIp}:3260/iqn.2010-06.com.nutanix:${vg.targetName}/1`])).rejects.toThrow();
    const etag = (await call(sim, 'GET', `${vol}/${vgId}`)).headers.etag ?? '';
    await task('DELETE', `${vol}/${vgId}`, undefined, { 'If-Match': etag });
    expect((await sim.admin.state()).iscsiTargets).toEqual([]);
  });

  it('exports attached volume groups again after a restart (new tgtd, new address)', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'sim-iscsi-restart-'));
    const first = await startSim({ dataDir, vms: 2 });
    let targetName = '';
    let snapshotFile = '';
    try {
      const run = async (method: string, path: string, body?: unknown): Promise<Record<string, unknown>> => {
        const res = await call(first, method, path, { body });
        return waitV4Task(first, apiResponse(taskReferenceSchema).parse(res.body).data.extId);
      };
      const vmUuid = ((await call(first, 'POST', '/api/nutanix/v3/vms/list', { body: {} })).body as { entities: Array<{ metadata: { uuid: string } }> }).entities[0]?.metadata.uuid;
      const rpId = completion(await run('POST', '/api/dataprotection/v4.0/config/recovery-points', { name: 'r', vmRecoveryPoints: [{ vmExtId: vmUuid }] }), 'recoveryPointExtId');
      const rp = apiResponse(recoveryPointSchema).parse((await call(first, 'GET', `/api/dataprotection/v4.0/config/recovery-points/${rpId}`)).body).data;
      const drp = rp.vmRecoveryPoints[0]?.diskRecoveryPoints[0];
      snapshotFile = `${dataDir}/snapshots/${rp.extId}/${drp?.diskExtId}`;
      const vgId = completion(await run('POST', vol, { name: 'survivor' }), 'volumeGroupExtId');
      await run('POST', `${vol}/${vgId}/disks`, { diskDataSourceReference: { entityType: 'DISK_RECOVERY_POINT', extId: drp?.diskRecoveryPointExtId } });
      await run('POST', `${vol}/${vgId}/$actions/attach-iscsi-client`, { iscsiInitiatorName: qemuInitiator });
      targetName = apiResponse(volumeGroupSchema).parse((await call(first, 'GET', `${vol}/${vgId}`)).body).data.targetName;
    } finally {
      await first.stop();
    }
    const second = await startSim({ dataDir, vms: 2 });
    try {
      const url = `iscsi://${second.dataServicesIp}:3260/iqn.2010-06.com.nutanix:${targetName}/1`;
      expect((await execFileAsync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', snapshotFile, url])).stdout).toMatch(/Images are identical/);
    } finally {
      await second.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
