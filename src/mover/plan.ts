/**
 * Turns the planner's regions (byte ranges, any alignment) into cluster-aligned copy actions for the qcow2
 * writer. A cluster touched only in part by a region is copied whole from the source, which holds the full
 * truth, so an overlay never needs a read-modify-write of its backing file.
 */
import { AppError, ErrorCode } from '../lib/errors.ts';
import { RegionType, type Region } from './types.ts';

export const CopyActionKind = { Data: 'data', Zero: 'zero' } as const;
export type CopyActionKind = (typeof CopyActionKind)[keyof typeof CopyActionKind];

/** Cluster-aligned, ascending, non-overlapping; only the disk's last cluster may be short. */
export interface CopyAction {
  kind: CopyActionKind;
  offset: number;
  length: number;
}

export interface PlanOptions {
  sizeBytes: number;
  clusterSize: number;
  /** Data actions are cut into pieces of at most this many bytes (a multiple of clusterSize). */
  maxDataBytes: number;
  /** Overlays record ZEROED clusters as zero clusters (hiding backing data); full images leave them unallocated. */
  overlay: boolean;
}

export interface PlanTotals {
  /** REGULAR + ZEROED bytes of the regions seen so far. */
  changedBytes: number;
  /** Bytes of whole clusters inside ZEROED regions: recorded (overlay) or left (full) as zeros, never read. */
  zeroBytes: number;
}

function badRegion(message: string): AppError {
  return new AppError(ErrorCode.InvalidInput, message, { hint: 'regions must be sorted by offset, non-overlapping, non-empty and inside the disk' });
}

export function* planCopy(regions: Iterable<Region>, options: PlanOptions, totals: PlanTotals): Generator<CopyAction> {
  const { sizeBytes, clusterSize: cs, maxDataBytes, overlay } = options;
  const floor = (n: number) => Math.floor(n / cs) * cs;
  const ceil = (n: number) => Math.min(Math.ceil(n / cs) * cs, sizeBytes);
  let current: CopyAction | undefined;
  let previousEnd = 0;

  function* add(kind: CopyActionKind, start: number, end: number): Generator<CopyAction> {
    if (current && start < current.offset + current.length) {
      // Only a data cluster shared with the previous region can overlap; it is already being copied.
      if (kind !== CopyActionKind.Data || current.kind !== CopyActionKind.Data) {
        throw new AppError(ErrorCode.Internal, `copy plan overlap at ${start}: ${kind} after ${current.kind}`);
      }
      start = current.offset + current.length;
      if (start >= end) return;
    }
    if (current && current.kind === kind && current.offset + current.length === start) {
      current.length = end - current.offset;
    } else {
      if (current) yield* split(current);
      current = { kind, offset: start, length: end - start };
    }
  }

  function* split(action: CopyAction): Generator<CopyAction> {
    if (action.kind === CopyActionKind.Zero) return yield action;
    for (let at = 0; at < action.length; at += maxDataBytes) {
      yield { kind: action.kind, offset: action.offset + at, length: Math.min(maxDataBytes, action.length - at) };
    }
  }

  for (const region of regions) {
    const { offset, length, type } = region;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || length <= 0 || offset < 0 || offset + length > sizeBytes) {
      throw badRegion(`region [${offset}, +${length}) is outside the ${sizeBytes}-byte disk or empty`);
    }
    if (offset < previousEnd) throw badRegion(`region at ${offset} overlaps or precedes the previous region ending at ${previousEnd}`);
    if (type !== RegionType.Regular && type !== RegionType.Zeroed) throw badRegion(`region at ${offset} has unknown type ${String(type)}`);
    const end = offset + length;
    previousEnd = end;
    totals.changedBytes += length;
    if (type === RegionType.Regular) {
      yield* add(CopyActionKind.Data, floor(offset), ceil(end));
      continue;
    }
    const zeroStart = Math.min(Math.ceil(offset / cs) * cs, sizeBytes);
    const zeroEnd = end === sizeBytes ? sizeBytes : floor(end);
    totals.zeroBytes += Math.max(0, zeroEnd - zeroStart);
    if (!overlay) continue; // unallocated clusters of a full image already read as zeros
    if (zeroStart >= zeroEnd) {
      yield* add(CopyActionKind.Data, floor(offset), ceil(end));
      continue;
    }
    if (offset < zeroStart) yield* add(CopyActionKind.Data, floor(offset), zeroStart);
    yield* add(CopyActionKind.Zero, zeroStart, zeroEnd);
    if (zeroEnd < end) yield* add(CopyActionKind.Data, zeroEnd, ceil(end));
  }
  if (current) yield* split(current);
}
