import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { type TestHttpsServer, startHttpsServer } from '../../test/prism/https-server.ts';
import { type TestPki, makeTestPki } from '../../test/prism/tls.ts';
import { createLogger } from '../lib/log.ts';
import { PrismHttp, nutanixMessage, retryAfterMs } from './http.ts';

describe('retryAfterMs', () => {
  const now = Date.parse('2026-11-26T20:00:00Z');
  it('reads Retry-After in seconds or as an HTTP date', () => {
    expect(retryAfterMs({ headers: { 'retry-after': '3' } }, now)).toBe(3000);
    expect(retryAfterMs({ headers: { 'retry-after': 'Thu, 26 Nov 2026 20:00:05 GMT' } }, now)).toBe(5000);
  });
  it('falls back to X-Ratelimit-Reset, as seconds to wait or as an epoch', () => {
    expect(retryAfterMs({ headers: { 'x-ratelimit-reset': '2' } }, now)).toBe(2000);
    expect(retryAfterMs({ headers: { 'x-ratelimit-reset': String(now / 1000 + 4) } }, now)).toBe(4000);
    expect(retryAfterMs({ headers: {} }, now)).toBeUndefined();
  });
});

describe('nutanixMessage', () => {
  it('reads the recorded v3 403 body and the recorded v4 404 body', () => {
    expect(
      nutanixMessage('{"api_version":"3.1","code":403,"message_list":[{"message":"No permission to access the resource.","reason":"ACCESS_DENIED"}],"state":"ERROR"}'),
    ).toBe('ACCESS_DENIED: No permission to access the resource.');
    expect(
      nutanixMessage(
        '{"$dataItemDiscriminator":"vmm.v4.error.ErrorResponse","data":{"$objectType":"vmm.v4.error.ErrorResponse","error":[{"$objectType":"vmm.v4.error.AppMessage","code":"VMM-30100","errorGroup":"VM_NOT_FOUND","message":"Failed to perform the operation on the VM with UUID \'x\', because it is not found.","severity":"ERROR"}]}}',
      ),
    ).toBe("VMM-30100: Failed to perform the operation on the VM with UUID 'x', because it is not found.");
    expect(nutanixMessage('<html>')).toBeUndefined();
  });
});

describe('PrismHttp against a real HTTPS server answering 503', () => {
  let pki: TestPki;
  let server: TestHttpsServer;
  beforeAll(async () => {
    pki = makeTestPki();
    server = await startHttpsServer(pki, () => ({ status: 503, headers: { 'Retry-After': '0' }, body: '{"state":"ERROR","code":503,"message_list":[{"reason":"SERVICE_UNAVAILABLE","message":"busy"}]}' }));
  });
  afterAll(async () => {
    await server.close();
    pki.cleanup();
  });

  function http(options: { caPem?: string; insecureSkipTlsVerify?: boolean }) {
    return new PrismHttp({ endpoint: server.url, username: 'u', password: 'p', logger: createLogger({ level: 'silent' }), retry: { attempts: 3, baseDelayMs: 1 }, ...options });
  }

  it('sends a write that is not marked retry-safe exactly once, and retries one that is', async () => {
    const client = http({ caPem: pki.caPem });
    try {
      const call = (retrySafe: boolean) => client.request({ method: 'POST', path: '/api/nutanix/v3/vms', body: {}, schema: z.unknown(), retrySafe, what: 'create a VM' });
      await expect(call(false)).rejects.toMatchObject({ code: 'UNAVAILABLE', retryable: true, message: 'create a VM: Prism is unavailable (HTTP 503): SERVICE_UNAVAILABLE: busy' });
      expect(server.requests).toHaveLength(1);
      await expect(call(true)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
      expect(server.requests).toHaveLength(1 + 3);
    } finally {
      await client.close();
    }
  });

  it('verifies the certificate unless told to skip verification', async () => {
    const strict = http({});
    const lax = http({ insecureSkipTlsVerify: true });
    try {
      const get = (client: PrismHttp) => client.request({ method: 'GET', path: '/x', schema: z.unknown(), retrySafe: false, what: 'read x' });
      await expect(get(strict)).rejects.toMatchObject({ code: 'TLS_UNTRUSTED' });
      await expect(get(lax)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    } finally {
      await strict.close();
      await lax.close();
    }
  });
});
