/**
 * Copies one disk from an NBD export into a QCOW2 image: REGULAR regions are read with a few large requests
 * in flight into reused buffers and appended to the image in guest order; ZEROED regions become zero clusters
 * in an overlay and nothing in a full image. Every written run of at most 1 MiB gets an xxh3-64 checksum.
 *
 * On any failure the partial image is deleted before the error is thrown, so a file at target.path after a
 * successful return is always a complete, fsynced image and never otherwise.
 */
import { z } from 'zod';
import { AppError, ErrorCode, abortError, isAppError } from '../lib/errors.ts';
import { NbdClient, type ByteRange, type NbdEndpoint } from '../nbd/client.ts';
import { DEFAULT_CLUSTER_SIZE, Qcow2Writer, alignedBuffers, type GuestRun, type Qcow2WriteSummary } from '../qcow2/writer.ts';
import { hashBlock } from './checksum.ts';
import { CopyActionKind, planCopy, type CopyAction, type PlanTotals } from './plan.ts';
import { tierTuning } from './tiers.ts';
import type { BlockChecksum, DiskCopyProgress, DiskCopyStats, Region } from './types.ts';

export const CHECKSUM_RUN_BYTES = 1024 * 1024;
/** Image writes in flight: two keep the disk busy while the next buffer is hashed and queued. */
const WRITE_DEPTH = 2;

export interface CopyDiskOptions {
  source: NbdEndpoint;
  exportName?: string;
  regions: Iterable<Region>;
  sizeBytes: number;
  target: { path: string; backing?: { relativePath: string; sizeBytes: number } };
  clusterSize?: number;
  requestSize?: number;
  inFlight?: number;
  /** See Qcow2WriterOptions.syncEveryBytes. */
  syncEveryBytes?: number;
  /** See Qcow2WriterOptions.direct (default true). */
  direct?: boolean;
  signal?: AbortSignal;
  onProgress?: (progress: DiskCopyProgress) => void;
  progressIntervalMs?: number;
}

export interface DiskCopyResult {
  stats: DiskCopyStats;
  checksums: BlockChecksum[];
  image: Qcow2WriteSummary;
}

const NumbersSchema = z.object({
  sizeBytes: z.number().int().positive(),
  clusterSize: z.number().int().positive(),
  requestSize: z.number().int().positive(),
  inFlight: z.number().int().min(1).max(64),
  progressIntervalMs: z.number().int().min(0),
  backingSizeBytes: z.number().int().positive().optional(),
});

/**
 * Work in guest order: data actions packed back to back into one buffer, all read at once, plus the zero
 * actions between them (small incremental regions share a buffer, so many are in flight, and one pwritev
 * covers them whatever zeroed regions lie in between).
 */
interface Slot {
  actions: CopyAction[];
  buffer: Buffer | undefined;
  used: number;
  reads: Array<Promise<ByteRange[]>>;
}

export async function copyDisk(options: CopyDiskOptions): Promise<DiskCopyResult> {
  const started = performance.now();
  const { signal } = options;
  const clusterSize = options.clusterSize ?? DEFAULT_CLUSTER_SIZE;
  const parsed = NumbersSchema.safeParse({
    sizeBytes: options.sizeBytes,
    clusterSize,
    requestSize: options.requestSize ?? tierTuning.ssd.requestSize,
    inFlight: options.inFlight ?? tierTuning.ssd.inFlight,
    progressIntervalMs: options.progressIntervalMs ?? 250,
    backingSizeBytes: options.target.backing?.sizeBytes,
  });
  if (!parsed.success) {
    throw new AppError(ErrorCode.InvalidInput, `copyDisk options are invalid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`, {
      hint: 'sizes are positive byte counts, inFlight 1-64',
    });
  }
  const { sizeBytes, inFlight, progressIntervalMs, backingSizeBytes } = parsed.data;
  // Requests are whole clusters so that every piece can be appended to the image as it arrives.
  const requestSize = Math.max(clusterSize, Math.floor(parsed.data.requestSize / clusterSize) * clusterSize);
  const backing = options.target.backing;
  if (backing && backingSizeBytes !== sizeBytes) {
    throw new AppError(ErrorCode.InvalidInput, `disk is ${sizeBytes} bytes but its backing image is ${backingSizeBytes} bytes`, {
      hint: 'a resized disk needs a full backup (no backing)',
    });
  }
  if (signal?.aborted) throw abortError(signal, 'copy disk');

  const client = await NbdClient.connect({ endpoint: options.source, exportName: options.exportName, metaContexts: [], signal });
  let writer: Qcow2Writer | undefined;
  try {
    if (client.sizeBytes < sizeBytes) {
      throw new AppError(ErrorCode.InvalidInput, `the NBD export is ${client.sizeBytes} bytes, smaller than the disk size ${sizeBytes}`, {
        hint: 'sizeBytes must be the size of the exported snapshot disk',
      });
    }
    writer = await Qcow2Writer.create({
      path: options.target.path,
      sizeBytes,
      clusterSize,
      backing: backing ? { relativePath: backing.relativePath, format: 'qcow2' } : undefined,
      syncEveryBytes: options.syncEveryBytes,
      direct: options.direct,
    });
    const totals: PlanTotals = { changedBytes: 0, zeroBytes: 0 };
    const checksums: BlockChecksum[] = [];
    let transferredBytes = 0;
    let holeBytes = 0;
    let doneBytes = 0;
    let lastProgress = 0;
    const report = (force: boolean) => {
      if (!options.onProgress) return;
      const now = performance.now();
      if (!force && now - lastProgress < progressIntervalMs) return;
      lastProgress = now;
      options.onProgress({ doneBytes, totalBytes: sizeBytes, transferredBytes });
    };

    // Page-aligned so that the writer can use O_DIRECT; reused for the whole copy.
    const free: Buffer[] = alignedBuffers(inFlight, requestSize);
    const slots: Slot[] = [];
    const activeWriter = writer;

    /** Checksums the data runs, then hands every run of the slot to the writer in one call. */
    const writeRuns = async (runs: GuestRun[]) => {
      let bytes = 0;
      for (const run of runs) {
        if (!('data' in run)) continue;
        const { guestOffset, data } = run;
        for (let at = 0; at < data.length; at += CHECKSUM_RUN_BYTES) {
          const piece = data.subarray(at, Math.min(data.length, at + CHECKSUM_RUN_BYTES));
          checksums.push({ offset: guestOffset + at, length: piece.length, hash: hashBlock(piece) });
        }
        bytes += data.length;
      }
      await activeWriter.writeRuns(runs);
      transferredBytes += bytes;
    };

    /** Writes in progress, oldest first; each frees its buffer when done. */
    const writing: Array<Promise<void>> = [];

    /**
     * Completes the oldest slot's reads and starts its write. The writer places clusters when a write is
     * called, so calls are issued synchronously in guest order while up to WRITE_DEPTH writes run at once.
     */
    const drain = async () => {
      const slot = slots.shift();
      if (!slot) return;
      const holes = (await Promise.all(slot.reads)).flat();
      const { buffer } = slot;
      const runs: GuestRun[] = [];
      let at = 0;
      for (const action of slot.actions) {
        if (action.kind === CopyActionKind.Zero || !buffer) {
          runs.push({ guestOffset: action.offset, zeroes: action.length });
          continue;
        }
        const data = buffer.subarray(at, at + action.length);
        at += action.length;
        const inAction = holes.filter((h) => h.offset < action.offset + action.length && h.offset + h.length > action.offset);
        for (const run of inAction.length === 0 ? [{ offset: action.offset, length: action.length, hole: false }] : clusterRuns(action, inAction, clusterSize)) {
          if (!run.hole) {
            runs.push({ guestOffset: run.offset, data: data.subarray(run.offset - action.offset, run.offset - action.offset + run.length) });
            continue;
          }
          holeBytes += run.length;
          // A hole in an overlay must still hide the backing data; in a full image it stays unallocated.
          if (backing) runs.push({ guestOffset: run.offset, zeroes: run.length });
        }
      }
      const done = (runs.length > 0 ? writeRuns(runs) : Promise.resolve()).then(() => {
        if (buffer) free.push(buffer);
      });
      done.catch(() => undefined); // observed below or at the end; avoid an unhandled rejection meanwhile
      writing.push(done);
      const last = slot.actions.at(-1);
      if (last) doneBytes = last.offset + last.length;
      report(false);
      while (writing.length > WRITE_DEPTH) await writing.shift();
    };

    let filling: Slot | undefined;
    for (const action of planCopy(options.regions, { sizeBytes, clusterSize, maxDataBytes: requestSize, overlay: backing !== undefined }, totals)) {
      if (signal?.aborted) throw abortError(signal, 'copy disk');
      if (action.kind === CopyActionKind.Zero) {
        // Zero clusters take no buffer space: they ride along with the data around them in the same write.
        if (!filling) {
          filling = { actions: [], buffer: undefined, used: 0, reads: [] };
          slots.push(filling);
        }
        filling.actions.push(action);
        continue;
      }
      if (!filling?.buffer || filling.used + action.length > requestSize) {
        filling = undefined;
        while (free.length === 0) await (slots.length > 0 ? drain() : writing.shift());
        filling = { actions: [], buffer: free.pop()!, used: 0, reads: [] };
        slots.push(filling);
      }
      const target = filling.buffer!;
      // No per-read signal: the connection was opened with it, and an abort fails every read at once.
      const read = client.read(action.offset, action.length, target, { targetStart: filling.used }).then((r) => r.holes);
      read.catch(() => undefined); // observed by drain(); avoid an unhandled rejection meanwhile
      filling.actions.push(action);
      filling.reads.push(read);
      filling.used += action.length;
    }
    while (slots.length > 0) await drain();
    await Promise.all(writing);
    if (signal?.aborted) throw abortError(signal, 'copy disk');
    const image = await writer.finalize();
    doneBytes = sizeBytes;
    report(true);
    const durationMs = performance.now() - started;
    return {
      stats: {
        logicalBytes: sizeBytes,
        changedBytes: totals.changedBytes,
        transferredBytes,
        zeroBytes: totals.zeroBytes + holeBytes,
        durationMs: Math.round(durationMs),
        throughputBytesPerSec: durationMs > 0 ? Math.round((transferredBytes / durationMs) * 1000) : 0,
      },
      checksums,
      image,
    };
  } catch (err) {
    await writer?.abandon();
    if (signal?.aborted) throw abortError(signal, 'copy disk');
    if (isAppError(err)) throw err;
    throw new AppError(ErrorCode.DataPath, `copy to ${options.target.path} failed: ${(err as Error).message}`, { cause: err });
  } finally {
    await client.close().catch(() => client.destroy());
  }
}

/** Splits a data action into runs of whole clusters that are entirely holes or contain data. */
function clusterRuns(action: CopyAction, holes: ByteRange[], clusterSize: number): Array<ByteRange & { hole: boolean }> {
  const sorted = [...holes].sort((a, b) => a.offset - b.offset);
  const runs: Array<ByteRange & { hole: boolean }> = [];
  let h = 0;
  const end = action.offset + action.length;
  for (let at = action.offset; at < end; at += clusterSize) {
    const clusterEnd = Math.min(at + clusterSize, end);
    // Holes from one read never overlap; walk them to see whether [at, clusterEnd) is covered.
    while (h < sorted.length && sorted[h]!.offset + sorted[h]!.length <= at) h++;
    let covered = at;
    for (let k = h; k < sorted.length && sorted[k]!.offset <= covered && covered < clusterEnd; k++) {
      covered = Math.max(covered, sorted[k]!.offset + sorted[k]!.length);
    }
    const hole = covered >= clusterEnd;
    const last = runs.at(-1);
    if (last && last.hole === hole) last.length += clusterEnd - at;
    else runs.push({ offset: at, length: clusterEnd - at, hole });
  }
  return runs;
}
