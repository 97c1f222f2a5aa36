/**
 * KubeApi against real servers: a node:https server with an openssl-issued certificate (client-certificate auth,
 * keep-alive, the watch stream cut at awkward places, in-stream errors, aborts) and the test bed's kube-apiserver
 * (including an Informer on this client, for what it keeps of the objects).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createTestbedPki, type TestbedPki } from '../../test/support/testbed-pki.ts';
import { startTestbed, type Testbed } from '../../test/support/testbed.ts';
import { createLogger } from '../lib/log.ts';
import { Informer } from './informer.ts';
import { forEachLine, KubeApi, kubeStatusOf, PatchType, type ResourceType } from './kube.ts';
import { inClusterConnection, type KubeConnection } from './kubeconfig.ts';

const configMaps: ResourceType = { group: '', version: 'v1', plural: 'configmaps', kind: 'ConfigMap' };
const seconds = (s: number): AbortSignal => AbortSignal.timeout(s * 1000);

describe('forEachLine', () => {
  it('splits lines across and within chunks, skips blank lines, keeps a last line without newline', async () => {
    async function* chunks(): AsyncIterable<Buffer> {
      for (const part of ['{"a":', '1}\n{"b":2}\n\n{"c"', ':3}\n{"d":"é', '"}']) yield Buffer.from(part);
    }
    const lines: string[] = [];
    await forEachLine(chunks(), (line) => lines.push(line));
    expect(lines).toEqual(['{"a":1}', '{"b":2}', '{"c":3}', '{"d":"é"}']);
  });
});

describe('KubeApi over HTTPS (a real node:https server)', () => {
  let dir: string;
  let pki: TestbedPki;
  let server: Server;
  let base: string;
  let connections = 0;
  /** What the handler saw of each request. */
  const seen: { method: string; url: string; headers: IncomingMessage['headers']; body: string; clientCn: string | undefined }[] = [];
  let handle: (req: IncomingMessage, res: ServerResponse) => void = () => undefined;
  let ca: Buffer;

  const connection = (overrides: Partial<KubeConnection> = {}): KubeConnection => ({
    server: base,
    ca,
    cert: undefined,
    key: undefined,
    insecureSkipTlsVerify: false,
    tlsServerName: undefined,
    authorization: () => undefined,
    namespace: undefined,
    source: 'test',
    ...overrides,
  });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kube-api-test-'));
    pki = await createTestbedPki(dir, seconds(60));
    ca = Buffer.from(pki.caPem);
    server = createServer(
      { cert: await readFile(pki.servingCert), key: await readFile(pki.servingKey), ca, requestCert: true, rejectUnauthorized: false },
      (req, res) => {
        let body = '';
        req.setEncoding('utf8');
        req.on('data', (chunk: string) => (body += chunk));
        req.on('end', () => {
          const peer = (req.socket as TLSSocket).getPeerCertificate();
          seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body, clientCn: typeof peer.subject?.CN === 'string' ? peer.subject.CN : undefined });
          handle(req, res);
        });
      },
    );
    server.on('secureConnection', () => connections++);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }, 60_000);

  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });

  const json = (res: ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(body));
  };

  it('sends the method, path, query, content type, body, Accept and Authorization; authenticates with a client certificate; reuses one connection', async () => {
    const api = new KubeApi(connection({ cert: await readFile(pki.adminCert), key: await readFile(pki.adminKey), authorization: () => 'Bearer t0k3n' }));
    handle = (_req, res) => json(res, 200, { kind: 'ConfigMap', metadata: { name: 'x' } });
    seen.length = 0;
    const before = connections;
    const answer = await api.patch(configMaps, 'ns-a', 'x', [{ op: 'add', path: '/data/k', value: 'v' }], {
      patchType: PatchType.Json,
      fieldManager: 'sendense',
      signal: seconds(10),
    });
    await api.request({ method: 'GET', path: '/api/v1/namespaces/ns-a/configmaps/x', accept: 'application/json;as=Table;g=meta.k8s.io;v=v1', signal: seconds(10) });
    expect(answer).toEqual({ kind: 'ConfigMap', metadata: { name: 'x' } });
    expect(seen[0]).toMatchObject({
      method: 'PATCH',
      url: '/api/v1/namespaces/ns-a/configmaps/x?fieldManager=sendense',
      body: '[{"op":"add","path":"/data/k","value":"v"}]',
      clientCn: 'sendense-testbed-admin',
      headers: expect.objectContaining({ 'content-type': 'application/json-patch+json', authorization: 'Bearer t0k3n', accept: 'application/json' }),
    });
    expect(seen[1]?.headers.accept).toBe('application/json;as=Table;g=meta.k8s.io;v=v1');
    expect(connections - before).toBe(1);
    api.close();
  });

  it('a request on a kept-alive connection the server dropped is sent again on a new one, except a create', async () => {
    const api = new KubeApi(connection());
    // The server drops each connection at its second request, as one closing an idle connection at that moment does.
    const requestsOn = new WeakMap<object, number>();
    handle = (req, res) => {
      const n = (requestsOn.get(req.socket) ?? 0) + 1;
      requestsOn.set(req.socket, n);
      if (n === 2) req.socket.destroy();
      else json(res, 200, { kind: 'ConfigMap', metadata: { name: 'x' } });
    };
    const before = connections;
    await api.get(configMaps, 'ns', 'x', seconds(10));
    await api.get(configMaps, 'ns', 'x', seconds(10));
    expect(connections - before).toBe(2);
    await expect(api.create(configMaps, 'ns', { metadata: { name: 'y' } }, seconds(10))).rejects.toMatchObject({ code: 'UNREACHABLE', retryable: true });
    api.close();
  });

  it('maps HTTP failures and an untrusted certificate to AppErrors', async () => {
    const api = new KubeApi(connection());
    handle = (_req, res) => json(res, 404, { kind: 'Status', message: 'configmaps "x" not found', reason: 'NotFound', code: 404 });
    await expect(api.get(configMaps, 'ns', 'x', seconds(10))).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringContaining('configmaps "x" not found') });
    expect(await api.getIfExists(configMaps, 'ns', 'x', seconds(10))).toBeUndefined();
    handle = (_req, res) => json(res, 409, { message: 'the object has been modified', code: 409 });
    const conflict = await api.get(configMaps, 'ns', 'x', seconds(10)).catch((err: unknown) => err);
    expect(conflict).toMatchObject({ code: 'CONFLICT', retryable: true });
    expect(kubeStatusOf(conflict)).toBe(409);
    const untrusted = new KubeApi(connection({ ca: undefined }));
    await expect(untrusted.get(configMaps, 'ns', 'x', seconds(10))).rejects.toMatchObject({ code: 'TLS_UNTRUSTED', hint: expect.stringContaining('certificate-authority') });
    const skipping = new KubeApi(connection({ ca: undefined, insecureSkipTlsVerify: true }));
    await expect(skipping.get(configMaps, 'ns', 'x', seconds(10))).rejects.toMatchObject({ code: 'CONFLICT' });
    for (const client of [api, untrusted, skipping]) client.close();
  });

  it('watch: events cut across writes arrive whole and in order, bookmarks included; a clean end resolves', async () => {
    const api = new KubeApi(connection());
    const lines = [
      { type: 'ADDED', object: { metadata: { name: 'a', resourceVersion: '11' } } },
      { type: 'BOOKMARK', object: { metadata: { resourceVersion: '12' } } },
      { type: 'MODIFIED', object: { metadata: { name: 'a', resourceVersion: '13' }, data: { big: 'x'.repeat(70_000) } } },
      { type: 'DELETED', object: { metadata: { name: 'a', resourceVersion: '14' } } },
    ]
      .map((e) => JSON.stringify(e) + '\n')
      .join('');
    handle = (_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      // Cut at odd offsets: inside a name, right after a newline, inside the big object.
      const cuts = [5, 60, lines.indexOf('\n') + 1, 40_000, lines.length];
      let from = 0;
      const writeNext = (): void => {
        const to = cuts.shift();
        if (to === undefined) return void res.end();
        res.write(lines.slice(from, to));
        from = to;
        setImmediate(writeNext);
      };
      writeNext();
    };
    const events: string[] = [];
    await api.watch(configMaps, 'ns', '10', (type, object) => events.push(`${type} ${z.looseObject({ metadata: z.looseObject({ resourceVersion: z.string() }) }).parse(object).metadata.resourceVersion}`), seconds(10));
    expect(events).toEqual(['ADDED 11', 'BOOKMARK 12', 'MODIFIED 13', 'DELETED 14']);
    const query = new URL(seen.at(-1)?.url ?? '', base).searchParams;
    expect(Object.fromEntries(query)).toMatchObject({ watch: 'true', resourceVersion: '10', allowWatchBookmarks: 'true' });
    expect(Number(query.get('timeoutSeconds'))).toBeGreaterThanOrEqual(300);
    api.close();
  });

  it('watch: an in-stream ERROR (410 Gone) and an HTTP 403 reject with their status; an abort rejects as aborted', async () => {
    const api = new KubeApi(connection());
    handle = (_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.write(JSON.stringify({ type: 'ADDED', object: { metadata: { name: 'a', resourceVersion: '5' } } }) + '\n');
      res.write(JSON.stringify({ type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired', message: 'too old resource version: 5 (9)' } }) + '\n');
    };
    const delivered: string[] = [];
    const gone = await api.watch(configMaps, 'ns', '5', (type) => delivered.push(type), seconds(10)).catch((err: unknown) => err);
    expect(kubeStatusOf(gone)).toBe(410);
    expect(gone).toMatchObject({ code: 'CONFLICT', message: expect.stringContaining('too old resource version') });
    expect(delivered).toEqual(['ADDED']);

    handle = (_req, res) => json(res, 403, { message: 'forbidden: cannot watch', code: 403 });
    await expect(api.watch(configMaps, 'ns', '5', () => undefined, seconds(10))).rejects.toMatchObject({ code: 'FORBIDDEN' });

    let opened!: () => void;
    const streaming = new Promise<void>((resolve) => (opened = resolve));
    let closedByClient!: () => void;
    const closed = new Promise<void>((resolve) => (closedByClient = resolve));
    handle = (_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.write(JSON.stringify({ type: 'ADDED', object: { metadata: { name: 'a', resourceVersion: '6' } } }) + '\n');
      res.on('close', () => closedByClient());
    };
    const stop = new AbortController();
    const watching = api.watch(configMaps, 'ns', '5', () => opened(), stop.signal);
    await streaming;
    stop.abort(new Error('informer stopped'));
    await expect(watching).rejects.toMatchObject({ code: 'ABORTED', message: expect.stringContaining('informer stopped') });
    await closed;
    api.close();
  });

  it('an in-cluster token rotated on disk is sent from then on', async () => {
    const saDir = await mkdtemp(join(dir, 'sa-'));
    await writeFile(join(saDir, 'token'), 'token-1');
    await writeFile(join(saDir, 'ca.crt'), pki.caPem);
    const port = new URL(base).port;
    const api = new KubeApi(inClusterConnection({ env: { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: port }, serviceAccountDir: saDir, tokenCacheMs: 0 }));
    handle = (_req, res) => json(res, 200, {});
    await api.get(configMaps, 'ns', 'x', seconds(10));
    await writeFile(join(saDir, 'token'), 'token-2');
    await api.get(configMaps, 'ns', 'x', seconds(10));
    expect(seen.slice(-2).map((s) => s.headers.authorization)).toEqual(['Bearer token-1', 'Bearer token-2']);
    api.close();
  });
});

describe('KubeApi against the real kube-apiserver', () => {
  let testbed: Testbed;
  let api: KubeApi;
  const namespace = 'default';

  beforeAll(async () => {
    testbed = await startTestbed({ rbac: true });
    api = KubeApi.fromKubeconfig(testbed.kubeconfigAdmin);
  }, 120_000);
  afterAll(async () => {
    api?.close();
    await testbed?.stop();
  });

  it('lists, watches from the list, sees a create and a merge patch, and stops on abort', async () => {
    const name = `cm-${randomBytes(3).toString('hex')}`;
    const { resourceVersion } = await api.list(configMaps, namespace, seconds(10));
    const stop = new AbortController();
    const events: { type: string; name: string; data: unknown }[] = [];
    let sawPatch!: () => void;
    const patched = new Promise<void>((resolve) => (sawPatch = resolve));
    const watching = api.watch(
      configMaps,
      namespace,
      resourceVersion,
      (type, object) => {
        const cm = z.looseObject({ metadata: z.looseObject({ name: z.string() }), data: z.record(z.string(), z.string()).optional() }).parse(object);
        if (cm.metadata.name !== name) return;
        events.push({ type, name: cm.metadata.name, data: cm.data });
        if (cm.data?.k === 'patched') sawPatch();
      },
      stop.signal,
    );
    await api.create(configMaps, namespace, { metadata: { name }, data: { k: 'created' } }, seconds(10));
    await api.patch(configMaps, namespace, name, { data: { k: 'patched' } }, { patchType: PatchType.Merge, signal: seconds(10) });
    await patched;
    stop.abort(new Error('done'));
    await expect(watching).rejects.toMatchObject({ code: 'ABORTED' });
    expect(events).toEqual([
      { type: 'ADDED', name, data: { k: 'created' } },
      { type: 'MODIFIED', name, data: { k: 'patched' } },
    ]);
    const table = z.object({ kind: z.literal('Table'), rows: z.array(z.unknown()) }).parse(
      await api.request({ method: 'GET', path: `/api/v1/namespaces/${namespace}/configmaps/${name}`, accept: 'application/json;as=Table;g=meta.k8s.io;v=v1', signal: seconds(10) }),
    );
    expect(table.rows).toHaveLength(1);
    await api.delete(configMaps, namespace, name, seconds(10));
    expect(await api.getIfExists(configMaps, namespace, name, seconds(10))).toBeUndefined();
  });

  it('an informer on this client caches listed and watched objects without managedFields', async () => {
    const name = (suffix: string) => `mf-${suffix}-${randomBytes(3).toString('hex')}`;
    const [listed, watched] = [name('listed'), name('watched')];
    const apply = (cm: string) =>
      api.patch(configMaps, namespace, cm, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: cm }, data: { k: 'v' } }, { patchType: PatchType.Apply, fieldManager: 'kube-test', signal: seconds(10) });
    const withFields = z.looseObject({ metadata: z.looseObject({ managedFields: z.array(z.unknown()).min(1) }) });
    expect(withFields.safeParse(await apply(listed)).success).toBe(true); // the API server does send them
    const informer = new Informer(api, configMaps, namespace, createLogger({ level: 'silent' }));
    informer.start();
    try {
      await informer.waitForSync();
      let arrived!: () => void;
      const watchedArrived = new Promise<void>((resolve) => (arrived = resolve));
      informer.on((_event, object) => object.metadata.name === watched && arrived());
      await apply(watched);
      await watchedArrived;
      for (const cm of [listed, watched]) {
        const cached = informer.get(namespace, cm);
        expect(cached?.metadata.name).toBe(cm);
        expect(cached?.metadata).not.toHaveProperty('managedFields');
      }
    } finally {
      await informer.stop();
      await Promise.all([listed, watched].map((cm) => api.delete(configMaps, namespace, cm, seconds(10))));
    }
  });
});
