import { spawn } from 'node:child_process';
import { access, open, readdir, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { vmDir, type VmRef } from './layout.ts';
import { acquireVmLock } from './lock.ts';
import { listPoints, listVmPoints } from './points.ts';
import { beginPoint, readJournal, recoverLeftovers, type Leftover } from './staging.ts';
import { MiB, ReferenceDisks, commitTestPoint, tempDir, vmConfig } from './test-repo.ts';

const nodeBin = join(import.meta.dirname, '../../node_modules/.bin/node');

/** Starts crash-child.ts and waits until it has staged a point; returns the process and the point id. */
async function stageInChild(vm: VmRef) {
  const child = spawn(nodeBin, [join(import.meta.dirname, 'crash-child.ts'), vm.repo, vm.clusterUuid, vm.vmUuid], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const pointId = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const match = /^ready (\S+)\n/.exec(out);
      if (match) resolve(match[1]!);
    });
    child.once('exit', (code) => reject(new Error(`crash-child exited ${code}: ${err}`)));
  });
  return { child, pointId };
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

describe('atomic commit, journal and leftovers', () => {
  let work: Awaited<ReturnType<typeof tempDir>>;
  let vm: VmRef;

  beforeEach(async () => {
    work = await tempDir('repo-staging-');
    vm = { repo: join(work.path, 'repo'), clusterUuid: 'cluster-1', vmUuid: 'vm-1' };
  });
  afterEach(async () => work.remove());

  it('a process killed before commit leaves no visible point; the next run gets its journal and cleans up', async () => {
    const { child, pointId } = await stageInChild(vm);
    try {
      // While the backup lives, its VM is locked for other backups and for cleanup.
      await expect(beginPoint(vm, { parentPointId: null })).rejects.toMatchObject({ code: 'CONFLICT' });
      await expect(recoverLeftovers(vm, async () => undefined)).rejects.toMatchObject({ code: 'CONFLICT' });
    } finally {
      child.kill('SIGKILL');
      await once(child, 'exit').catch(() => undefined);
    }
    expect(await listPoints(vm.repo)).toEqual([]);
    expect(await exists(join(vmDir(vm), `.staging-${pointId}`, 'disk-0.qcow2'))).toBe(true);

    // First cleanup fails on Nutanix: the leftover stays for the next run.
    const failing = await recoverLeftovers(vm, async () => {
      throw new Error('Prism unreachable');
    });
    expect(failing.removed).toEqual([]);
    expect(failing.kept).toHaveLength(1);

    const seen: Leftover[] = [];
    const report = await recoverLeftovers(vm, async (leftover) => {
      seen.push(leftover);
    });
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ pointId, journal: { pointId, recoveryPointRequestId: 'request-1', vmUuid: 'vm-1' } });
    expect(seen[0]!.journal!.resources).toEqual([
      { kind: 'recovery-point', id: 'rp-1', detail: { generation: 'v4' } },
      { kind: 'volume-group', id: 'vg-1' },
    ]);
    expect(report.removed.map((l) => l.pointId)).toEqual([pointId]);
    expect((await readdir(vmDir(vm))).filter((n) => n.startsWith('.staging-'))).toEqual([]);

    // The dead owner's lock was stale: a new backup starts and commits.
    const reference = new ReferenceDisks(work.path, [16 * MiB]);
    await reference.create();
    const point = await commitTestPoint(vm, null, [[{ offset: 0, length: MiB, pattern: 1 }]], reference);
    expect((await listVmPoints(vm)).map((p) => p.pointId)).toEqual([point.pointId]);
  });

  it('lands journal writes started without awaiting in the order they were started', async () => {
    const staged = await beginPoint(vm, { parentPointId: null, recoveryPointRequestId: 'request-2' });
    expect((await readJournal(staged.dir))?.recoveryPointRequestId).toBe('request-2');
    const writes = [staged.recordRecoveryPoint({ kind: 'recovery-point', id: 'rp-2' })];
    for (let i = 0; i < 5; i++) writes.push(staged.addResource({ kind: 'volume-group', id: `vg-${i}` }));
    writes.push(staged.removeResource('volume-group', 'vg-0'));
    await Promise.all(writes);
    const journal = await readJournal(staged.dir);
    expect(journal?.recoveryPointRequestId).toBeUndefined();
    expect(journal?.resources.map((r) => r.id)).toEqual(['rp-2', 'vg-1', 'vg-2', 'vg-3', 'vg-4']);
    expect(await staged.abort()).toBe(false);
  });

  it('abort removes the staging folder only when nothing is left on Nutanix', async () => {
    const kept = await beginPoint(vm, { parentPointId: null });
    await kept.addResource({ kind: 'recovery-point', id: 'rp-x' });
    expect(await kept.abort()).toBe(false);
    expect(await exists(kept.dir)).toBe(true);

    const removed = await beginPoint(vm, { parentPointId: null });
    await removed.addResource({ kind: 'volume-group', id: 'vg-x' });
    await removed.removeResource('volume-group', 'vg-x');
    expect(await removed.abort()).toBe(true);
    expect(await exists(removed.dir)).toBe(false);
    expect(await listPoints(vm.repo)).toEqual([]);
  });

  describe('refuses to commit', () => {
    const commitRequest = () => ({
      type: 'full' as const,
      typeReason: 'first backup',
      vm: vmConfig(vm, [16 * MiB]),
      consistency: { requested: 'crash' as const, obtained: 'CRASH_CONSISTENT' as const },
      recoveryPoint: { id: 'rp-1', generation: 'v3' as const, disks: [] },
    });
    const disk0 = { index: 0, uuid: 'd0', logicalSizeBytes: 16 * MiB, stats: { logicalBytes: 16 * MiB, changedBytes: 0, transferredBytes: 0, zeroBytes: 0, durationMs: 0, throughputBytesPerSec: 0 }, checksums: [], zeroRanges: [] };

    it('without disks, with an export still recorded, or an invalid manifest', async () => {
      const request = commitRequest();
      const staged = await beginPoint(vm, { parentPointId: null });
      await expect(staged.commit(request)).rejects.toMatchObject({ code: 'INTERNAL', message: /no disk was written/ });
      await staged.createDiskImage(0, 16 * MiB, { overlay: false });
      await staged.writeDisk(disk0);
      await staged.addResource({ kind: 'iscsi-attachment', id: 'att-1' });
      await expect(staged.commit(request)).rejects.toMatchObject({ code: 'INTERNAL', message: /iscsi-attachment att-1 not released/ });
      await staged.removeResource('iscsi-attachment', 'att-1');
      await expect(staged.commit({ ...request, vm: { ...request.vm, memorySizeMib: 1.5 } })).rejects.toMatchObject({ code: 'INVALID_INPUT', message: /memorySizeMib/ });
      expect(await staged.abort()).toBe(true);
      expect(await listPoints(vm.repo)).toEqual([]);
    });

    it('with a damaged image (qemu-img check, started when the disk is recorded)', async () => {
      const staged = await beginPoint(vm, { parentPointId: null });
      const image = await staged.createDiskImage(0, 16 * MiB, { overlay: false });
      // Point the L1 table past the end of the file: qemu-img check refuses the image.
      const file = await open(image, 'r+');
      const l1 = Buffer.alloc(8);
      l1.writeBigUInt64BE(1n << 40n);
      await file.write(l1, 0, 8, 40);
      await file.close();
      await staged.writeDisk(disk0);
      await expect(staged.commit(commitRequest())).rejects.toMatchObject({ code: 'INTEGRITY', message: /qemu-img check/ });
      expect(await staged.abort()).toBe(true);
      expect(await listPoints(vm.repo)).toEqual([]);
    });
  });
});

describe('per-VM lock', () => {
  let work: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => {
    work = await tempDir('repo-lock-');
  });
  afterEach(async () => work.remove());

  it('is exclusive while held and free after release', async () => {
    const first = await acquireVmLock(work.path, 'backup of vm-1');
    await expect(acquireVmLock(work.path, 'backup of vm-1')).rejects.toMatchObject({ code: 'CONFLICT', message: new RegExp(`pid ${process.pid}`) });
    await first.release();
    const second = await acquireVmLock(work.path, 'backup of vm-1');
    await second.release();
  });

  it('takes over a lock whose process is dead on this host, never one from another host', async () => {
    const dead = spawn(nodeBin, ['-e', '0']);
    await once(dead, 'exit');
    await writeFile(join(work.path, '.lock'), JSON.stringify({ pid: dead.pid, hostname: hostname(), acquiredAt: '2026-01-01T00:00:00Z' }));
    const taken = await acquireVmLock(work.path, 'backup');
    expect(taken.owner.pid).toBe(process.pid);
    await taken.release();

    await writeFile(join(work.path, '.lock'), JSON.stringify({ pid: dead.pid, hostname: 'another-node', acquiredAt: '2026-01-01T00:00:00Z' }));
    await expect(acquireVmLock(work.path, 'backup')).rejects.toMatchObject({ code: 'CONFLICT', hint: expect.stringContaining('.lock') });
  });
});
