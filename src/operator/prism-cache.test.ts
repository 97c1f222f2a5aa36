import { describe, expect, it } from 'vitest';
import type { PrismConnection } from '../prism/types.ts';
import { PrismClientCache } from './prism-cache.ts';

const connection: PrismConnection = { endpoint: 'https://pc.example.test:9440', username: 'backup', password: 'one' };

describe('PrismClientCache', () => {
  it('reuses the client while the connection is unchanged and replaces it when the password rotates', async () => {
    const cache = new PrismClientCache();
    const first = cache.get('ns/lab', connection);
    expect(cache.get('ns/lab', { ...connection })).toBe(first);
    const rotated = cache.get('ns/lab', { ...connection, password: 'two' });
    expect(rotated).not.toBe(first);
    expect(cache.get('ns/lab', { ...connection, password: 'two', caPem: 'PEM' })).not.toBe(rotated);
    expect(cache.get('ns/other', connection)).not.toBe(first);
    expect(cache.size).toBe(2);
    await cache.delete('ns/lab');
    expect(cache.size).toBe(1);
    await cache.closeAll();
    expect(cache.size).toBe(0);
  });
});
