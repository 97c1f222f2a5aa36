/** QCOW2 v3 on-disk constants (qemu/qemu docs/interop/qcow2.txt). All integers are big-endian. */
export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const QCOW2_VERSION = 3;
/** v3 header without the optional compression-type field. */
export const HEADER_LENGTH = 104;
export const REFCOUNT_ORDER = 4; // 16-bit refcounts, qemu's default
export const REFCOUNT_BYTES = 2;

export const HeaderExtension = {
  End: 0x00000000,
  BackingFormat: 0xe2792aca,
  FeatureNameTable: 0x6803f857,
} as const;

/** L1/L2 entry bits. OFLAG_COPIED (bit 63): refcount is exactly 1, so the cluster may be written in place. */
export const OFLAG_COPIED_HIGH = 0x80000000; // bit 63 in the high u32
export const L2_ZERO_FLAG = 1; // bit 0: the cluster reads as zeros (v3)
export const OFFSET_MASK_HIGH = 0x00ffffff; // bits 32-55 of the host offset in the high u32
export const OFFSET_MASK_LOW = 0xfffffe00; // bits 9-31 in the low u32

export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;

export function clusterBitsOf(clusterSize: number): number {
  const bits = Math.log2(clusterSize);
  return Number.isInteger(bits) && bits >= MIN_CLUSTER_BITS && bits <= MAX_CLUSTER_BITS ? bits : -1;
}

/** Writes a host offset with flags as one big-endian u64 without BigInt (offsets < 2^53). */
export function writeEntry(table: Buffer, byteOffset: number, hostOffset: number, highFlags: number, lowFlags: number): void {
  table.writeUInt32BE((highFlags | Math.floor(hostOffset / 2 ** 32)) >>> 0, byteOffset);
  table.writeUInt32BE(((hostOffset >>> 0) | lowFlags) >>> 0, byteOffset + 4);
}

/** Host offset held in an L1/L2 entry (bits 9-55). */
export function entryOffset(table: Buffer, byteOffset: number): number {
  const high = table.readUInt32BE(byteOffset) & OFFSET_MASK_HIGH;
  const low = table.readUInt32BE(byteOffset + 4) & OFFSET_MASK_LOW;
  return high * 2 ** 32 + (low >>> 0);
}
