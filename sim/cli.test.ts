/** `sim disk-path` / `sim write` with and without a running simulator, and state surviving a restart. */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSim } from '../test/support/sim.ts';
import { call } from './testkit.ts';

const execFileAsync = promisify(execFile);
const bin = resolve(dirname(fileURLToPath(import.meta.url)), '../bin/sendense-nutanix');
let dataDir: string;

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'sim-cli-'));
});

afterAll(async () => {
  await rm(dataDir, { recursive: true, force: true });
});

async function snapshotFile(sim: Awaited<ReturnType<typeof startSim>>, vmName: string): Promise<string> {
  const vm = ((await call(sim, 'POST', '/api/nutanix/v3/vms/list', { body: { filter: `vm_name==${vmName}` } })).body as { entities: Array<{ metadata: { uuid: string } }> }).entities[0];
  const created = (await call(sim, 'POST', '/api/nutanix/v3/vm_snapshots', { body: { metadata: { kind: 'vm_snapshot' }, spec: { name: 's', resources: { entity_uuid: vm?.metadata.uuid } } } })).body as {
    metadata: { uuid: string };
    status: { execution_context: { task_uuid: string } };
  };
  await call(sim, 'POST', '/api/nutanix/v3/tasks/poll', { body: { task_uuid_list: [created.status.execution_context.task_uuid], poll_timeout_seconds: 20 } });
  const got = (await call(sim, 'GET', `/api/nutanix/v3/vm_snapshots/${created.metadata.uuid}`)).body as { status: { snapshot_file_list: Array<{ snapshot_file_path: string }> } };
  return got.status.snapshot_file_list[0]?.snapshot_file_path ?? '';
}

describe('sim CLI and persistence', () => {
  it('writes through a running sim, writes directly on a stopped one, and keeps state across restarts', async () => {
    const first = await startSim({ dataDir, vms: 3, iscsi: false });
    let base: string;
    try {
      base = await snapshotFile(first, 'vm-0001');
      const viaSim = JSON.parse((await execFileAsync(bin, ['sim', 'write', '--data', dataDir, '--vm', 'vm-0001', '--disk', '0', '--changed-percent', '2'])).stdout) as { generation: number };
      expect(viaSim.generation).toBe(2);
      const path = (await execFileAsync(bin, ['sim', 'disk-path', '--data', dataDir, '--vm', 'vm-0001', '--disk', '0'])).stdout.trim();
      expect(path).toBe(await first.diskPath('vm-0001', 0));
    } finally {
      await first.stop();
    }
    await expect(readFile(join(dataDir, 'sim.json'))).rejects.toThrow(/ENOENT/);

    const direct = JSON.parse((await execFileAsync(bin, ['sim', 'write', '--data', dataDir, '--vm', 'vm-0001', '--disk', '0', '--changed-percent', '2', '--seed', '9'])).stdout) as {
      generation: number;
      blocks: Array<{ offset: number; length: number; zero: boolean }>;
    };
    expect(direct.generation).toBe(3);

    const second = await startSim({ dataDir, vms: 3, iscsi: false });
    try {
      const after = await snapshotFile(second, 'vm-0001');
      const regions = (await call(second, 'POST', '/api/nutanix/v3/data/changed_regions', { body: { snapshot_file_path: after, reference_snapshot_file_path: base } })).body as { region_list: Array<{ offset: number; length: number }> };
      const covered = new Set<number>();
      for (const r of regions.region_list) for (let o = r.offset; o < r.offset + r.length; o += 65536) covered.add(o);
      // Both write rounds (through the sim and directly) are in the diff: state and maps persisted.
      for (const block of direct.blocks) expect(covered.has(block.offset)).toBe(true);
      expect(covered.size).toBeGreaterThan(direct.blocks.length);
    } finally {
      await second.stop();
    }
  });

  it('names the bad flag when input is invalid', async () => {
    await expect(execFileAsync(bin, ['sim', 'write', '--data', dataDir, '--vm', 'vm-0001', '--disk', '0', '--changed-percent', 'lots'])).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--changed-percent/),
    });
    await expect(execFileAsync(bin, ['sim', '--data', dataDir, '--listen', '10.0.0.1:9440'])).rejects.toMatchObject({ stderr: expect.stringMatching(/--listen: must be a loopback/) });
  });
});
