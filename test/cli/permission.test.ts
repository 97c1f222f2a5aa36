/** A Prism user without the permission to create recovery points gets one clear line, against the real simulator. */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSim, type RunningSim } from '../support/sim.ts';

const run = promisify(execFile);
const bin = join(import.meta.dirname, '../../bin/sendense-nutanix');

describe('missing permission', () => {
  let sim: RunningSim;
  let work: string;
  beforeAll(async () => {
    sim = await startSim({ api: 'v4', vms: 1, disksPerVm: 1 });
    work = await mkdtemp(join(tmpdir(), 'permission-'));
    await writeFile(join(work, 'password'), sim.password);
  });
  afterAll(async () => {
    await sim?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('backup as a read-only user: exit 3, one line naming the missing permission, nothing left on Nutanix', async () => {
    const failure = await run(bin, [
      'backup',
      ...['--endpoint', sim.endpoint, '--username', sim.viewerUsername, '--password-file', join(work, 'password'), '--ca-file', sim.caFile],
      ...['--vm', 'vm-0001', '--repo', join(work, 'repo')],
    ]).then(
      () => undefined,
      (err: { code: number; stdout: string; stderr: string }) => err,
    );
    expect(failure?.code).toBe(3);
    expect(failure?.stdout).toBe('');
    const lines = failure?.stderr.trim().split('\n') ?? [];
    expect(lines, failure?.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/may not|permission/i);
    const state = await sim.admin.state();
    expect(state.recoveryPoints).toEqual([]);
  });
});
