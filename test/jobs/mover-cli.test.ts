/** `sendense-nutanix mover …` as a process: a bad request exits 2 with a failure termination message naming the field. */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MoverExitCode, TerminationMessageSchema } from '../../src/jobs/contract.ts';

const bin = join(resolve(dirname(fileURLToPath(import.meta.url)), '../..'), 'bin/sendense-nutanix');

function mover(command: string, env: Record<string, string>): Promise<{ code: number; stderr: string; stdout: string }> {
  return new Promise((done) => {
    execFile(bin, ['mover', command], { env: { PATH: process.env.PATH ?? '', ...env } }, (err, stdout, stderr) => {
      done({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describe('mover CLI', { timeout: 120_000 }, () => {
  let dir: string;
  let log: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mover-cli-'));
    log = join(dir, 'termination-log');
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('exits 2 on an invalid request and writes the reason as the termination message', async () => {
    await writeFile(log, '');
    const request = { apiVersion: 'sendense.io/mover-request/v1', kind: 'cleanup', run: { namespace: 'ns', name: 'r' }, repository: { path: '../x' }, vm: { uuid: 'u', name: 'n', clusterUuid: 'c' }, pointId: 'p' };
    const result = await mover('cleanup', { SENDENSE_MOVER_REQUEST: JSON.stringify(request), SENDENSE_TERMINATION_LOG: log, LOG_LEVEL: 'silent' });
    expect(result.code).toBe(MoverExitCode.InvalidRequest);
    expect(result.stderr).toMatch(/repository\.path/);
    const message = TerminationMessageSchema.parse(JSON.parse(await readFile(log, 'utf8')));
    expect(message).toMatchObject({ kind: 'failure', code: 'INVALID_INPUT', exitCode: 2, retryable: false });
    expect(message.kind === 'failure' && message.message).toMatch(/pointId/);
  });

  it('refuses a request of another kind than the command', async () => {
    const request = { apiVersion: 'sendense.io/mover-request/v1', kind: 'cleanup', run: { namespace: 'ns', name: 'r' }, repository: {}, vm: { uuid: 'u', name: 'n', clusterUuid: 'c' }, pointId: '20261126T201500Z-3fa2c1' };
    const result = await mover('disk', { SENDENSE_MOVER_REQUEST: JSON.stringify(request), LOG_LEVEL: 'silent' });
    expect(result.code).toBe(MoverExitCode.InvalidRequest);
    expect(result.stderr).toContain('run `sendense-nutanix mover cleanup`');
  });

  it('removes a staging folder through `mover cleanup` (nothing there: removed false, exit 0)', async () => {
    const request = { apiVersion: 'sendense.io/mover-request/v1', kind: 'cleanup', run: { namespace: 'ns', name: 'r' }, repository: { root: dir, path: 'repo' }, vm: { uuid: 'u', name: 'n', clusterUuid: 'c' }, pointId: '20261126T201500Z-3fa2c1' };
    const result = await mover('cleanup', { SENDENSE_MOVER_REQUEST: JSON.stringify(request), LOG_LEVEL: 'silent' });
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({ kind: 'cleanup', pointId: '20261126T201500Z-3fa2c1', removed: false });
  });
});
