/**
 * The client against recorded real Prism Central exchanges: every recorded response parses through the
 * client's schemas, and the requests the client sends for the same calls have the recorded (and swagger) shape.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { type RecordedExchange, loadFixtures } from '../../test/prism/fixtures.ts';
import { type TestHttpsServer, startHttpsServer } from '../../test/prism/https-server.ts';
import { swaggerErrors } from '../../test/prism/swagger.ts';
import { type TestPki, makeTestPki } from '../../test/prism/tls.ts';
import { createLogger } from '../lib/log.ts';
import { createPrismClient } from './client.ts';
import {
  v3ClusterListSchema,
  v3ClusterSchema,
  v3IdempotenceIdentifiersSchema,
  v3IdempotenceRequestSchema,
  v3ListRequestSchema,
  v3PrismCentralSchema,
  v3VmListSchema,
  v3VmSchema,
} from './schemas.ts';
import { toVm } from './v3.ts';

const fixtures = loadFixtures();
const key = (f: RecordedExchange) => `${f.file} ${f.method}`;

/** What the client reads from each recorded response; null where the client never makes that call. */
const responseSchemas: Record<string, z.ZodType | null> = {
  'CreateIdempotenceIdentifers POST': v3IdempotenceIdentifiersSchema,
  'GetIdempotenceIdentifers GET': v3IdempotenceIdentifiersSchema,
  // The client keeps its reservations (they make retried creates idempotent) and lets them expire.
  'DeleteIdempotenceIdentifers DELETE': null,
  'CreateVM POST': v3VmSchema,
  'GetVM GET': v3VmSchema,
  'UpdateVM GET': v3VmSchema,
  'UpdateVM PUT': v3VmSchema,
  'GetCluster GET': v3ClusterSchema,
  'ListCluster POST': v3ClusterListSchema,
  'ListVM POST': v3VmListSchema,
  'GetPrismCentral GET': v3PrismCentralSchema,
};

/** Request bodies the client itself sends for the same calls, with their swagger definition. */
const requestShapes: Record<string, { schema: z.ZodType; definition: string }> = {
  'CreateIdempotenceIdentifers POST': { schema: v3IdempotenceRequestSchema, definition: 'idempotence_identifiers_input' },
  'ListCluster POST': { schema: v3ListRequestSchema, definition: 'cluster_list_metadata' },
  'ListVM POST': { schema: v3ListRequestSchema, definition: 'vm_list_metadata' },
};

function fixture(name: string): RecordedExchange {
  const found = fixtures.find((f) => key(f) === name);
  if (!found) throw new Error(`fixture ${name} missing`);
  return found;
}

describe('recorded Prism Central responses', () => {
  it('are all accounted for', () => {
    expect(fixtures.length).toBeGreaterThanOrEqual(11);
    expect(fixtures.map(key).sort()).toEqual(Object.keys(responseSchemas).sort());
  });

  for (const [name, schema] of Object.entries(responseSchemas)) {
    if (!schema) continue;
    it(`${name}: the response parses`, () => {
      const result = schema.safeParse(fixture(name).responseBody);
      expect(result.error?.issues).toBeUndefined();
    });
  }

  for (const [name, shape] of Object.entries(requestShapes)) {
    it(`${name}: the recorded request fits the client's request schema and the swagger`, () => {
      const body = fixture(name).requestBody;
      expect(shape.schema.safeParse(body).error?.issues).toBeUndefined();
      expect(swaggerErrors('pc', shape.definition, body)).toBeUndefined();
    });
  }

  it('reads task_uuid as a string in a create response and as an array in a GET', () => {
    const created = v3VmSchema.parse(fixture('CreateVM POST').responseBody);
    const got = v3VmSchema.parse(fixture('GetVM GET').responseBody);
    expect(created.status?.execution_context?.task_uuid).toBe('e074cb94-1123-4dca-82b0-b842f019a825');
    expect(got.status?.execution_context?.task_uuid).toEqual(['e074cb94-1123-4dca-82b0-b842f019a825']);
  });

  it('turns the recorded VM into the product model', () => {
    const vm = toVm(v3VmSchema.parse(fixture('GetVM GET').responseBody));
    expect(vm).toMatchObject({
      uuid: 'bdbbad7a-a401-4f9a-a789-2b8406905b56',
      name: 'test-vm',
      cluster: { uuid: '00061f7f-44f7-19dc-3be1-7cc25586ee44', name: 'ncn-dev-sandbox' },
      powerState: 'OFF',
      ngt: { installed: false, enabled: false, reachable: false, vssSnapshotCapable: false },
      categories: {},
      disks: [
        {
          uuid: '537e0352-0af0-4aa5-af01-28e5964c5e80',
          index: 0,
          busType: 'SCSI',
          deviceIndex: 0,
          sizeBytes: 8589934592,
          container: { uuid: '8a77ce4a-5730-44ea-a281-4c81b1277333', name: 'SelfServiceContainer' },
        },
      ],
      nics: [{ macAddress: '50:6b:8d:24:19:54', ipAddresses: ['10.23.129.96'], subnet: { name: 'vlan173' } }],
    });
  });
});

describe('the client against a server replaying the recordings (v3-only Prism Central)', () => {
  let pki: TestPki;
  let server: TestHttpsServer;
  const snapshotCreates: unknown[] = [];

  beforeAll(async () => {
    pki = makeTestPki();
    server = await startHttpsServer(pki, (req) => {
      const path = req.url.split('?')[0] ?? '';
      // A Prism without v4 answers 404 there, as an older PC does.
      if (path.startsWith('/api/clustermgmt/') || path.startsWith('/api/vmm/')) return { status: 404, body: '{"message":"The requested URL was not found on the server."}' };
      const cookie = { 'Set-Cookie': ['NTNX_IGW_SESSION=replay-session; Path=/; Secure; HttpOnly'] };
      if (req.method === 'GET' && path.startsWith('/api/nutanix/v3/idempotence_identifiers/')) return { status: 404, body: '' };
      if (req.method === 'GET' && path.startsWith('/api/nutanix/v3/vm_snapshots/')) return { status: 404, body: '' };
      if (req.method === 'POST' && path === '/api/nutanix/v3/vm_snapshots') {
        snapshotCreates.push(JSON.parse(req.body));
        return { status: 400, body: '{"state":"ERROR","code":400,"message_list":[{"reason":"INVALID_REQUEST","message":"replay ends here"}]}' };
      }
      const match = fixtures.find((f) => f.method === req.method && f.path === path);
      if (!match) return { status: 404, body: '' };
      let body = match.responseBody as { entities?: unknown[] } | undefined;
      if (req.method === 'POST' && path.endsWith('/list') && body?.entities) {
        // Answer pages like Prism does: the slice at offset/length of the recorded entities.
        const { offset = 0, length = 20 } = JSON.parse(req.body) as { offset?: number; length?: number };
        body = { ...body, entities: body.entities.slice(offset, offset + length) };
      }
      return { status: match.status, headers: cookie, body: JSON.stringify(body) };
    });
  });
  afterAll(async () => {
    await server.close();
    pki.cleanup();
  });

  it('discovers v3, lists and gets VMs with requests shaped like the recorded ones, on one session', async () => {
    const client = createPrismClient(
      { endpoint: server.url, username: 'admin', password: 'recorded', caPem: pki.caPem },
      { logger: createLogger({ level: 'silent' }) },
    );
    try {
      const caps = await client.capabilities();
      expect(caps.preferred).toBe('v3');
      expect(caps.apiGenerations).toEqual(['v3']);
      expect(caps.pcVersion).toBe('pc.2024.1.0.1');
      expect(caps.clusters).toEqual([
        { uuid: '0005b0f1-8f43-a0f2-02b7-3cecef193712', name: 'ganon', isPrismCentral: false, version: '6.5.4.5', dataServicesIp: '10.40.231.132' },
        { uuid: '710e3779-0030-4d55-9827-be11e7fd2d0e', name: 'ncn-dev-pc', isPrismCentral: true, version: '2024.1', dataServicesIp: undefined },
      ]);

      const vms = await client.listVms({ name: 'test-vm' });
      expect(vms.map((vm) => vm.uuid)).toEqual(['bdbbad7a-a401-4f9a-a789-2b8406905b56']);
      const vm = await client.findVm('bdbbad7a-a401-4f9a-a789-2b8406905b56');
      expect(vm.disks).toHaveLength(1);

      const listRequest = server.requests.find((r) => r.url === '/api/nutanix/v3/vms/list');
      const recorded = fixture('ListVM POST');
      expect(listRequest?.method).toBe(recorded.method);
      const sent = JSON.parse(listRequest?.body ?? '{}') as Record<string, unknown>;
      expect(swaggerErrors('pc', 'vm_list_metadata', sent)).toBeUndefined();
      expect(sent.filter).toBe((recorded.requestBody as { filter: string }).filter);
      expect(sent.length).toBe(500);
      expect(listRequest?.headers['content-type']).toBe('application/json');

      const clusterList = server.requests.find((r) => r.url === '/api/nutanix/v3/clusters/list');
      expect(swaggerErrors('pc', 'cluster_list_metadata', JSON.parse(clusterList?.body ?? '{}'))).toBeUndefined();
      expect(server.requests.some((r) => r.method === 'GET' && r.url === fixture('GetVM GET').path)).toBe(true);

      // Basic auth until Prism hands out a session cookie, then the cookie alone.
      const authed = server.requests.filter((r) => r.headers.authorization);
      expect(authed.length).toBeGreaterThanOrEqual(1);
      const afterCookie = server.requests.slice(server.requests.findIndex((r) => r.headers.cookie));
      expect(afterCookie.length).toBeGreaterThan(1);
      for (const r of afterCookie) {
        expect(r.headers.cookie).toBe('NTNX_IGW_SESSION=replay-session');
        expect(r.headers.authorization).toBeUndefined();
      }
    } finally {
      await client.close();
    }
  });

  it('reserves the snapshot UUID through idempotence_identifiers and sends a swagger-valid vm_snapshot', async () => {
    const client = createPrismClient(
      { endpoint: server.url, username: 'admin', password: 'recorded', caPem: pki.caPem },
      { logger: createLogger({ level: 'silent' }) },
    );
    try {
      const vm = await client.getVm('bdbbad7a-a401-4f9a-a789-2b8406905b56');
      await expect(client.createRecoveryPoint({ vm, name: 'nightly', consistency: 'CRASH_CONSISTENT', requestId: 'backup-1' })).rejects.toMatchObject({
        code: 'BAD_RESPONSE',
        message: expect.stringContaining('replay ends here'),
      });
      const reserve = server.requests.find((r) => r.method === 'POST' && r.url === '/api/nutanix/v3/idempotence_identifiers');
      const reserveBody = JSON.parse(reserve?.body ?? '{}') as Record<string, unknown>;
      expect(swaggerErrors('pc', 'idempotence_identifiers_input', reserveBody)).toBeUndefined();
      expect(Object.keys(reserveBody).sort()).toEqual(Object.keys(fixture('CreateIdempotenceIdentifers POST').requestBody as object).sort());

      expect(snapshotCreates).toHaveLength(1);
      expect(swaggerErrors('pe', 'vm_snapshot_intent_input', snapshotCreates[0])).toBeUndefined();
      const reserved = v3IdempotenceIdentifiersSchema.parse(fixture('CreateIdempotenceIdentifers POST').responseBody).uuid_list[0];
      expect(snapshotCreates[0]).toMatchObject({ metadata: { kind: 'vm_snapshot', uuid: reserved }, spec: { resources: { entity_uuid: vm.uuid } } });
    } finally {
      await client.close();
    }
  });
});
