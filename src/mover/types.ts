/** Contracts of the data path: what the planner hands the mover, and what the mover reports back. */

export const RegionType = { Regular: 'REGULAR', Zeroed: 'ZEROED' } as const;
export type RegionType = (typeof RegionType)[keyof typeof RegionType];

/** A byte range of a disk; ZEROED ranges read as zeros and are never transferred. */
export interface Region {
  offset: number;
  length: number;
  type: RegionType;
}

/** Checksum of guest bytes [offset, offset+length) as written into the restore point. */
export interface BlockChecksum {
  offset: number;
  length: number;
  /** xxh3-64, 16 lower-case hex digits. */
  hash: string;
}

export interface DiskCopyStats {
  logicalBytes: number;
  /** Bytes the plan said changed (REGULAR + ZEROED). */
  changedBytes: number;
  /** Bytes read from the source and written as data. */
  transferredBytes: number;
  /** Bytes recorded as zero without transfer. */
  zeroBytes: number;
  durationMs: number;
  /** transferredBytes per second. */
  throughputBytesPerSec: number;
}

export interface DiskCopyProgress {
  doneBytes: number;
  totalBytes: number;
  transferredBytes: number;
}
