import { describe, expect, it } from 'vitest';
import { clipRegions, idempotencyUuid, indexDisks, isUuid } from './model.ts';

describe('idempotencyUuid', () => {
  it('keeps a UUID request id and maps any other id to the same UUID every time', () => {
    expect(idempotencyUuid('0E4A7F1C-1111-4222-8333-444455556666')).toBe('0e4a7f1c-1111-4222-8333-444455556666');
    const a = idempotencyUuid('backup/ns/vm-1/2026-11-26T20:00Z');
    expect(isUuid(a)).toBe(true);
    expect(a[14]).toBe('5');
    expect(idempotencyUuid('backup/ns/vm-1/2026-11-26T20:00Z')).toBe(a);
    expect(idempotencyUuid('backup/ns/vm-1/2026-11-26T21:00Z')).not.toBe(a);
  });
});

describe('indexDisks', () => {
  it('numbers disks by bus (SCSI first) and device index, whatever order Prism listed them in', () => {
    const disks = indexDisks([
      { uuid: 'sata0', busType: 'SATA', deviceIndex: 0, sizeBytes: 1 },
      { uuid: 'scsi1', busType: 'SCSI', deviceIndex: 1, sizeBytes: 1 },
      { uuid: 'scsi0', busType: 'SCSI', deviceIndex: 0, sizeBytes: 1 },
      { uuid: 'pci0', busType: 'PCI', deviceIndex: 0, sizeBytes: 1 },
    ]);
    expect(disks.map((d) => [d.uuid, d.index])).toEqual([
      ['scsi0', 0],
      ['scsi1', 1],
      ['pci0', 2],
      ['sata0', 3],
    ]);
  });
});

describe('clipRegions', () => {
  it('cuts regions to the asked range and drops the empty ones', () => {
    expect(
      clipRegions(
        [
          { offset: 0, length: 100, type: 'REGULAR' },
          { offset: 100, length: 100, type: 'ZEROED' },
          { offset: 300, length: 100, type: 'REGULAR' },
        ],
        50,
        150,
      ),
    ).toEqual([
      { offset: 50, length: 50, type: 'REGULAR' },
      { offset: 100, length: 50, type: 'ZEROED' },
    ]);
  });
});
