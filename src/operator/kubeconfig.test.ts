import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { connectionFromKubeconfigFiles, inClusterConnection, loadKubeConnection } from './kubeconfig.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kubeconfig-test-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const b64 = (text: string): string => Buffer.from(text).toString('base64');

async function writeKubeconfig(name: string, config: Record<string, unknown>): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, stringify({ apiVersion: 'v1', kind: 'Config', ...config }));
  return path;
}

const oneContext = (cluster: Record<string, unknown>, user: Record<string, unknown> | undefined, namespace?: string) => ({
  'current-context': 'ctx',
  clusters: [{ name: 'c', cluster }],
  users: user ? [{ name: 'u', user }] : [],
  contexts: [{ name: 'ctx', context: { cluster: 'c', ...(user ? { user: 'u' } : {}), ...(namespace ? { namespace } : {}) } }],
});

async function serviceAccount(files: Record<string, string>): Promise<string> {
  const sa = join(dir, 'serviceaccount');
  await mkdir(sa, { recursive: true });
  for (const [name, text] of Object.entries(files)) await writeFile(join(sa, name), text);
  return sa;
}

describe('kubeconfig', () => {
  it('reads certificate files relative to the kubeconfig, inline data, and a static token', async () => {
    await mkdir(join(dir, 'pki'));
    await writeFile(join(dir, 'pki', 'ca.crt'), 'CA PEM');
    await writeFile(join(dir, 'pki', 'client.crt'), 'CLIENT PEM');
    const path = await writeKubeconfig(
      'config',
      oneContext({ server: 'https://127.0.0.1:6443/', 'certificate-authority': 'pki/ca.crt' }, { 'client-certificate': 'pki/client.crt', 'client-key-data': b64('KEY PEM') }, 'team-a'),
    );
    const connection = connectionFromKubeconfigFiles([path]);
    expect(connection.server).toBe('https://127.0.0.1:6443');
    expect(connection.ca?.toString()).toBe('CA PEM');
    expect(connection.cert?.toString()).toBe('CLIENT PEM');
    expect(connection.key?.toString()).toBe('KEY PEM');
    expect(connection.namespace).toBe('team-a');
    expect(connection.insecureSkipTlsVerify).toBe(false);
    expect(connection.authorization()).toBeUndefined();

    const withToken = await writeKubeconfig('token', oneContext({ server: 'https://k', 'certificate-authority-data': b64('CA2'), 'insecure-skip-tls-verify': true }, { token: 'abc' }));
    const tokenConnection = connectionFromKubeconfigFiles([withToken]);
    expect(tokenConnection.authorization()).toBe('Bearer abc');
    expect(tokenConnection.ca?.toString()).toBe('CA2');
    expect(tokenConnection.insecureSkipTlsVerify).toBe(true);
  });

  it('merges $KUBECONFIG files first-wins, as kubectl does', async () => {
    const first = await writeKubeconfig('first', { 'current-context': 'ctx', users: [{ name: 'u', user: { token: 'first' } }], contexts: [{ name: 'ctx', context: { cluster: 'c', user: 'u' } }] });
    const second = await writeKubeconfig('second', {
      'current-context': 'other',
      clusters: [{ name: 'c', cluster: { server: 'https://second:6443' } }],
      users: [{ name: 'u', user: { token: 'second' } }],
    });
    const connection = loadKubeConnection({ env: { KUBECONFIG: `${first}:${second}` } });
    expect(connection.server).toBe('https://second:6443');
    expect(connection.authorization()).toBe('Bearer first');
  });

  it('re-reads a tokenFile as it rotates', async () => {
    await writeFile(join(dir, 'token'), 'one\n');
    const path = await writeKubeconfig('config', oneContext({ server: 'https://k' }, { tokenFile: 'token' }));
    const fresh = connectionFromKubeconfigFiles([path], { tokenCacheMs: 0 });
    const cached = connectionFromKubeconfigFiles([path], { tokenCacheMs: 3_600_000 });
    expect([fresh.authorization(), cached.authorization()]).toEqual(['Bearer one', 'Bearer one']);
    await writeFile(join(dir, 'token'), 'two\n');
    expect([fresh.authorization(), cached.authorization()]).toEqual(['Bearer two', 'Bearer one']);
  });

  it('refuses credential plugins, proxies and dangling references with the field named', async () => {
    const exec = await writeKubeconfig('exec', oneContext({ server: 'https://k' }, { exec: { command: 'aws' } }));
    expect(() => connectionFromKubeconfigFiles([exec])).toThrow(expect.objectContaining({ code: 'UNSUPPORTED', message: expect.stringContaining('users[].user.exec') }));
    const provider = await writeKubeconfig('provider', oneContext({ server: 'https://k' }, { 'auth-provider': { name: 'gcp' } }));
    expect(() => connectionFromKubeconfigFiles([provider])).toThrow(/users\[\]\.user\.auth-provider/);
    const proxy = await writeKubeconfig('proxy', oneContext({ server: 'https://k', 'proxy-url': 'http://proxy:3128' }, undefined));
    expect(() => connectionFromKubeconfigFiles([proxy])).toThrow(/proxy-url is not supported/);
    const noContext = await writeKubeconfig('nocontext', { ...oneContext({ server: 'https://k' }, undefined), 'current-context': 'missing' });
    expect(() => connectionFromKubeconfigFiles([noContext])).toThrow(expect.objectContaining({ code: 'INVALID_INPUT', message: expect.stringContaining('current-context "missing"') }));
    const halfPair = await writeKubeconfig('halfpair', oneContext({ server: 'https://k' }, { 'client-certificate-data': b64('C') }));
    expect(() => connectionFromKubeconfigFiles([halfPair])).toThrow(/client certificate without its key/);
    const badServer = await writeKubeconfig('badserver', oneContext({ server: 'k:6443' }, undefined));
    expect(() => connectionFromKubeconfigFiles([badServer])).toThrow(/clusters\[\]\.cluster\.server "k:6443" is not an http\(s\) URL/);
    const missingCa = await writeKubeconfig('missingca', oneContext({ server: 'https://k', 'certificate-authority': 'nowhere.crt' }, undefined));
    expect(() => connectionFromKubeconfigFiles([missingCa])).toThrow(/clusters\[\]\.cluster\.certificate-authority/);
    await writeFile(join(dir, 'notyaml'), 'clusters: [unclosed');
    expect(() => connectionFromKubeconfigFiles([join(dir, 'notyaml')])).toThrow(expect.objectContaining({ code: 'INVALID_INPUT' }));
  });

  it('in-cluster: the service host and port, the mounted CA, namespace and a rotating token', async () => {
    const sa = await serviceAccount({ token: 'first-token', 'ca.crt': 'SA CA', namespace: 'backup-system\n' });
    const env = { KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '443' };
    const connection = inClusterConnection({ env, serviceAccountDir: sa, tokenCacheMs: 0 });
    expect(connection.server).toBe('https://[fd00::1]:443');
    expect(connection.ca?.toString()).toBe('SA CA');
    expect(connection.namespace).toBe('backup-system');
    expect(connection.authorization()).toBe('Bearer first-token');
    await writeFile(join(sa, 'token'), 'rotated-token');
    expect(connection.authorization()).toBe('Bearer rotated-token');
    // A token file that vanishes after a successful read keeps the last token (the kubelet swaps it atomically).
    await rm(join(sa, 'token'));
    expect(connection.authorization()).toBe('Bearer rotated-token');
    expect(() => inClusterConnection({ env: { KUBERNETES_SERVICE_HOST: 'h' }, serviceAccountDir: sa })).toThrow(/KUBERNETES_SERVICE_PORT/);
  });

  it('precedence: --kubeconfig, then $KUBECONFIG, then in-cluster, then ~/.kube/config', async () => {
    const flag = await writeKubeconfig('flag', oneContext({ server: 'https://flag' }, undefined));
    const listed = await writeKubeconfig('listed', oneContext({ server: 'https://listed' }, undefined));
    await mkdir(join(dir, 'home', '.kube'), { recursive: true });
    await writeFile(join(dir, 'home', '.kube', 'config'), stringify(oneContext({ server: 'https://home' }, undefined)));
    const sa = await serviceAccount({ token: 't', 'ca.crt': 'CA' });
    const inPod = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443', HOME: join(dir, 'home') };
    const server = (options: Parameters<typeof loadKubeConnection>[0]) => loadKubeConnection({ serviceAccountDir: sa, ...options }).server;
    expect(server({ kubeconfig: flag, env: { ...inPod, KUBECONFIG: listed } })).toBe('https://flag');
    expect(server({ env: { ...inPod, KUBECONFIG: listed } })).toBe('https://listed');
    expect(server({ env: inPod })).toBe('https://10.96.0.1:443');
    expect(server({ env: { HOME: join(dir, 'home') } })).toBe('https://home');
    expect(() => loadKubeConnection({ env: { HOME: join(dir, 'nobody') }, serviceAccountDir: sa })).toThrow(
      expect.objectContaining({ code: 'INVALID_INPUT', hint: expect.stringContaining('--kubeconfig') }),
    );
  });
});
