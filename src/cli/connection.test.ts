import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isAppError } from '../lib/errors.ts';
import { connectionFromFlags } from './connection.ts';

/** The one line the CLI would print for the rejection. */
const line = (p: Promise<unknown>) => p.then(
  () => 'resolved',
  (e: unknown) => (isAppError(e) ? e.oneLine() : String(e)),
);

const dir = mkdtempSync(join(tmpdir(), 'cli-connection-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('connectionFromFlags', () => {
  it('reads the password file (without its newline) and prefers flags over the environment', async () => {
    const passwordFile = join(dir, 'password');
    writeFileSync(passwordFile, 's3cret\n');
    const connection = await connectionFromFlags(
      { endpoint: 'prism.example.com', username: 'backup', passwordFile },
      { NUTANIX_USERNAME: 'env-user', NUTANIX_PASSWORD: 'env-pass' },
    );
    expect(connection).toEqual({ endpoint: 'https://prism.example.com:9440', username: 'backup', password: 's3cret' });
  });

  it('takes credentials from NUTANIX_USERNAME / NUTANIX_PASSWORD', async () => {
    const connection = await connectionFromFlags({ endpoint: 'https://10.0.0.5:9440', insecureSkipTlsVerify: true }, { NUTANIX_USERNAME: 'u', NUTANIX_PASSWORD: 'p' });
    expect(connection).toEqual({ endpoint: 'https://10.0.0.5:9440', username: 'u', password: 'p', insecureSkipTlsVerify: true });
  });

  it('names the missing or wrong flag', async () => {
    expect(await line(connectionFromFlags({ endpoint: 'https://p:9440' }, { NUTANIX_USERNAME: 'u' }))).toMatch(/no Prism password.*--password-file or set NUTANIX_PASSWORD/);
    expect(await line(connectionFromFlags({ endpoint: 'https://p:9440', passwordFile: join(dir, 'absent') }, { NUTANIX_USERNAME: 'u' }))).toMatch(/--password-file: cannot read .*ENOENT/);
    const notPem = join(dir, 'ca.txt');
    writeFileSync(notPem, 'hello');
    expect(await line(connectionFromFlags({ endpoint: 'https://p:9440', caFile: notPem }, { NUTANIX_USERNAME: 'u', NUTANIX_PASSWORD: 'p' }))).toMatch(/--ca-file: .* holds no PEM/);
    expect(await line(connectionFromFlags({ endpoint: 'http://p' }, { NUTANIX_USERNAME: 'u', NUTANIX_PASSWORD: 'p' }))).toMatch(/not https/);
    await expect(
      connectionFromFlags({ endpoint: 'https://p', caFile: notPem, insecureSkipTlsVerify: true }, { NUTANIX_USERNAME: 'u', NUTANIX_PASSWORD: 'p' }),
    ).rejects.toThrow(/contradict/);
  });
});
