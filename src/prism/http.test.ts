import { describe, expect, it } from 'vitest';
import { nutanixMessage, retryAfterMs } from './http.ts';

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
