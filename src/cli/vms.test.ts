/** `bin/sendense-nutanix vms` as a user runs it, against the simulator (and a recorded 403 for missing permission). */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHttpsServer } from '../../test/prism/https-server.ts';
import { makeTestPki } from '../../test/prism/tls.ts';
import { type RunningSim, startSim } from '../../test/support/sim.ts';

const bin = join(import.meta.dirname, '../../bin/sendense-nutanix');

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(bin, args, { env: { PATH: process.env.PATH ?? '', ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err && typeof err.code === 'number' ? err.code : err ? -1 : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** The CLI must fail with exactly one line on stderr and nothing on stdout. */
function expectOneLine(result: CliResult, code: number, pattern: RegExp): void {
  expect(result.stdout).toBe('');
  expect(result.stderr.trimEnd().split('\n')).toHaveLength(1);
  expect(result.stderr.trimEnd()).toMatch(pattern);
  expect(result.code).toBe(code);
}

describe('sendense-nutanix vms', () => {
  let sim: RunningSim;
  let dir: string;
  let env: Record<string, string>;

  beforeAll(async () => {
    sim = await startSim({ api: 'v4', vms: 12, disksPerVm: 2 });
    dir = mkdtempSync(join(tmpdir(), 'cli-vms-'));
    env = { NUTANIX_USERNAME: sim.username, NUTANIX_PASSWORD: sim.password };
  });
  afterAll(async () => {
    await sim?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('-o json prints every VM with only its real disks', async () => {
    const result = await cli(['vms', '--endpoint', sim.endpoint, '--ca-file', sim.caFile, '-o', 'json'], env);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const vms = JSON.parse(result.stdout) as Array<Record<string, unknown> & { name: string; disks: Array<Record<string, unknown>> }>;
    expect(vms).toHaveLength(12);
    for (const vm of vms) {
      expect(Object.keys(vm).sort()).toEqual(['categories', 'cluster', 'disks', 'name', 'ngt', 'powerState', 'uuid']);
      // Every 3rd VM also has a CD-ROM and every 5th a volume-group device: neither is listed.
      expect(vm.disks).toHaveLength(2);
      for (const disk of vm.disks) expect(Object.keys(disk).sort()).toEqual(['busType', 'container', 'index', 'sizeBytes', 'uuid']);
    }
    expect(vms.map((vm) => vm.name)).toEqual(Array.from({ length: 12 }, (_, i) => `vm-${String(i + 1).padStart(4, '0')}`));
  });

  it('prints a table by default, with credentials from --username and --password-file', async () => {
    const passwordFile = join(dir, 'password');
    writeFileSync(passwordFile, `${sim.password}\n`, { mode: 0o600 });
    const result = await cli(['vms', '--endpoint', sim.endpoint, '--ca-file', sim.caFile, '--username', sim.username, '--password-file', passwordFile]);
    expect(result.code).toBe(0);
    const lines = result.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+UUID\s+CLUSTER\s+POWER\s+NGT\s+DISKS\s+SIZE$/);
    expect(lines).toHaveLength(13);
    expect(lines[1]).toMatch(/^vm-0001\s+[0-9a-f-]{36}\s+cluster-1\s+\S+\s+\S+\s+2\s+32\.0 MiB$/);
  });

  it('a bad endpoint: one line naming the endpoint and the fix', async () => {
    // A port nothing listens on.
    const result = await cli(['vms', '--endpoint', 'https://127.0.0.1:1', '--insecure-skip-tls-verify'], env);
    expectOneLine(result, 4, /^sendense-nutanix: cannot reach Prism at https:\/\/127\.0\.0\.1:1 \(ECONNREFUSED\) \(check --endpoint/);
  });

  it('a wrong password: one line naming the credentials', async () => {
    const result = await cli(['vms', '--endpoint', sim.endpoint, '--ca-file', sim.caFile], { ...env, NUTANIX_PASSWORD: 'not-the-password' });
    expectOneLine(result, 3, /rejected the username or password \(HTTP 401\) \(check --username and --password-file/);
  });

  it('an untrusted certificate (no --ca-file): one line naming --ca-file', async () => {
    const result = await cli(['vms', '--endpoint', sim.endpoint], env);
    expectOneLine(result, 4, /the TLS certificate of https:\/\/127\.0\.0\.1:\d+ is not trusted \(\w+\) \(pass the Prism CA bundle with --ca-file/);
  });

  it('never writes the password or the Basic credentials, even at trace level', async () => {
    const password = 'Secret-Canary-Password-1';
    const basic = Buffer.from(`${sim.username}:${password}`).toString('base64');
    const result = await cli(['vms', '--endpoint', sim.endpoint, '--ca-file', sim.caFile], { ...env, NUTANIX_PASSWORD: password, LOG_LEVEL: 'trace' });
    expect(result.code).toBe(3);
    expect(result.stderr).not.toContain(password);
    expect(result.stderr).not.toContain(basic);
    expect(result.stderr).toMatch(/prism call/);
  });

  it('missing permission (the recorded Prism 403): one line naming the permission problem', async () => {
    const pki = makeTestPki();
    // Prism's recorded answer for a user without the right role (terraform-provider-nutanix issue #93).
    const server = await startHttpsServer(pki, (req) => ({
      status: 403,
      body: JSON.stringify({
        api_version: '3.1',
        code: 403,
        message_list: [{ message: `No permission to access the resource. <Request '${req.url}' [${req.method}]>`, reason: 'ACCESS_DENIED' }],
        state: 'ERROR',
      }),
    }));
    try {
      const result = await cli(['vms', '--endpoint', server.url, '--ca-file', pki.caFile], env);
      expectOneLine(result, 3, /^sendense-nutanix: the Prism user may not list clusters \(HTTP 403\): ACCESS_DENIED: No permission to access the resource\..*\(grant the user a role/);
    } finally {
      await server.close();
      pki.cleanup();
    }
  });
});
