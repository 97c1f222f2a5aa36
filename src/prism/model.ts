/** Generation-neutral helpers shared by the v3 and v4 backends. */
import { createHash } from 'node:crypto';
import type { Region } from '../mover/types.ts';
import type { VmDisk } from './types.ts';

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(text: string): boolean {
  return uuidPattern.test(text);
}

/**
 * The UUID sent as an idempotency key (v4 NTNX-Request-Id, v3 metadata.uuid): the request id itself when it is a
 * UUID, else a name-based (SHA-1, RFC 4122 version 5 layout) UUID of it, so the same key always maps to the same UUID.
 */
export function idempotencyUuid(requestId: string): string {
  if (isUuid(requestId)) return requestId.toLowerCase();
  const h = createHash('sha1').update(`sendense-nutanix:${requestId}`).digest();
  h[6] = ((h[6] ?? 0) & 0x0f) | 0x50;
  h[8] = ((h[8] ?? 0) & 0x3f) | 0x80;
  const hex = h.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** Bus order for disk numbering: SCSI (where AHV boot disks usually sit) first, unknown buses last. */
const busOrder = ['SCSI', 'PCI', 'SATA', 'IDE', 'SPAPR'];

function busRank(bus: string): number {
  const rank = busOrder.indexOf(bus.toUpperCase());
  return rank === -1 ? busOrder.length : rank;
}

/** Numbers the real disks in a stable order (bus, then device index), ignoring the order Prism listed them in. */
export function indexDisks(disks: Omit<VmDisk, 'index'>[]): VmDisk[] {
  return [...disks]
    .sort((a, b) => busRank(a.busType) - busRank(b.busType) || a.busType.localeCompare(b.busType) || a.deviceIndex - b.deviceIndex)
    .map((disk, index) => ({ ...disk, index }));
}

/** Regions clipped to [start, end), dropping empty ones; Prism may answer past the end the caller asked for. */
export function clipRegions(regions: Region[], start: number, end: number): Region[] {
  const out: Region[] = [];
  for (const r of regions) {
    const from = Math.max(r.offset, start);
    const to = Math.min(r.offset + r.length, end);
    if (to > from) out.push({ offset: from, length: to - from, type: r.type });
  }
  return out;
}
