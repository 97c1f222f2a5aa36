/**
 * The guest view of a QCOW2 backing chain, resolved once: for every guest range, the topmost layer that holds
 * it (as data or as a zero cluster). Reading a flattened image then costs one pass over long runs instead of
 * qemu's per-request walk down every backing file.
 */
import { open } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { AppError, ErrorCode, throwIfAborted } from '../lib/errors.ts';
import { QCOW2_MAGIC } from './format.ts';
import { ClusterState, Qcow2Layer } from './reader.ts';

export const ChainRunKind = { Data: 'data', Zero: 'zero' } as const;
export type ChainRunKind = (typeof ChainRunKind)[keyof typeof ChainRunKind];

/** A guest range that reads as zeros, or whose bytes are file bytes of one layer starting at hostOffset. */
export type ChainRun =
  | { kind: typeof ChainRunKind.Zero; offset: number; length: number }
  | { kind: typeof ChainRunKind.Data; offset: number; length: number; layer: number; hostOffset: number };

interface Range {
  offset: number;
  end: number;
}

/** Deeper than any chain we write (the engine takes a full every so often); a cycle of backing files ends here. */
const MAX_DEPTH = 4096;

function unsupported(message: string, hint: string): AppError {
  return new AppError(ErrorCode.Unsupported, message, { hint });
}

/** qemu probes an unnamed backing format; we read only what is recorded as qcow2 and carries its magic. */
async function checkQcow2Backing(overlay: Qcow2Layer, backingPath: string): Promise<void> {
  if (overlay.backingFormat !== undefined && overlay.backingFormat !== 'qcow2') {
    throw unsupported(`${overlay.path}: backing file ${backingPath} has format ${overlay.backingFormat}`, 'only qcow2 backing files are read directly');
  }
  if (overlay.backingFormat === undefined) {
    const file = await open(backingPath, 'r').catch((err: unknown) => {
      throw new AppError(ErrorCode.NotFound, `${overlay.path}: backing file ${backingPath}: ${(err as Error).message}`, { hint: 'restore the missing image of the chain', cause: err });
    });
    try {
      const magic = Buffer.alloc(4);
      await file.read(magic, 0, 4, 0);
      if (magic.readUInt32BE(0) !== QCOW2_MAGIC) throw unsupported(`${overlay.path}: backing file ${backingPath} is not qcow2`, 'only qcow2 backing files are read directly');
    } finally {
      await file.close();
    }
  }
}

export class Qcow2Chain {
  /** Top first, down to the image without a backing file. */
  readonly layers: readonly Qcow2Layer[];
  /** The top image's virtual size: the size of the flattened image. */
  readonly sizeBytes: number;

  private constructor(layers: Qcow2Layer[]) {
    this.layers = layers;
    this.sizeBytes = layers[0]!.sizeBytes;
  }

  /**
   * Opens `topPath` and every backing file below it, resolving relative names against each overlay's folder as
   * qemu does. Unsupported (so a caller may fall back to qemu) for backing files that are not plain qcow2 files.
   * `directReads` is passed to every layer (Qcow2Layer.open).
   */
  static async open(topPath: string, options: { signal?: AbortSignal; directReads?: boolean } = {}): Promise<Qcow2Chain> {
    const { signal } = options;
    const layers: Qcow2Layer[] = [];
    try {
      const seen = new Set<string>();
      for (let path = resolve(topPath); ; ) {
        throwIfAborted(signal, `open chain of ${topPath}`);
        if (seen.has(path) || seen.size >= MAX_DEPTH) throw new AppError(ErrorCode.Integrity, `${topPath}: the backing chain loops at ${path}`, { hint: 'fix the backing file names with qemu-img rebase -u' });
        seen.add(path);
        const layer = await Qcow2Layer.open(path, { directReads: options.directReads });
        layers.push(layer);
        const backing = layer.backingFile;
        if (backing === undefined) break;
        if (/^[a-z][a-z0-9+.-]*:/i.test(backing)) throw unsupported(`${path}: backing file "${backing}" is not a local file`, 'only local backing files are read directly');
        const next = isAbsolute(backing) ? backing : join(dirname(path), backing);
        await checkQcow2Backing(layer, next);
        path = next;
      }
      return new Qcow2Chain(layers);
    } catch (err) {
      await Promise.all(layers.map((l) => l.close()));
      throw err;
    }
  }

  /**
   * Every guest range of the flattened image, in order, covering [0, sizeBytes): the topmost layer holding it
   * wins, a zero cluster hides the data below it, and what no layer holds (or lies past a shorter backing
   * file's end) reads as zeros. Neighbours from the same layer and contiguous in its file are merged.
   */
  async runs(signal?: AbortSignal): Promise<ChainRun[]> {
    throwIfAborted(signal, `resolve chain of ${this.layers[0]!.path}`);
    // Every layer's L2 tables at once: on a cold cache the small reads of 30 files overlap instead of queueing.
    const layerMappings = await Promise.all(this.layers.map((layer) => layer.mappings()));
    throwIfAborted(signal, `resolve chain of ${this.layers[0]!.path}`);
    let holes: Range[] = [{ offset: 0, end: this.sizeBytes }];
    const resolved: ChainRun[] = [];
    for (const [index, layer] of this.layers.entries()) {
      if (holes.length === 0) break;
      const remaining: Range[] = [];
      let hole = 0;
      let cursor = holes[0]!.offset;
      for (const mapping of layerMappings[index]!) {
        if (mapping.state === ClusterState.Unallocated) continue;
        const mappingEnd = mapping.offset + mapping.length;
        // Holes (or their parts) wholly before this mapping stay holes.
        while (hole < holes.length && holes[hole]!.end <= mapping.offset) {
          if (cursor < holes[hole]!.end) remaining.push({ offset: cursor, end: holes[hole]!.end });
          hole++;
          cursor = holes[hole]?.offset ?? 0;
        }
        while (hole < holes.length && holes[hole]!.offset < mappingEnd) {
          const current = holes[hole]!;
          const start = Math.max(cursor, mapping.offset);
          if (cursor < start) remaining.push({ offset: cursor, end: start });
          const end = Math.min(current.end, mappingEnd);
          if (start < end) {
            resolved.push(
              mapping.state === ClusterState.Zero
                ? { kind: ChainRunKind.Zero, offset: start, length: end - start }
                : { kind: ChainRunKind.Data, offset: start, length: end - start, layer: index, hostOffset: mapping.hostOffset + (start - mapping.offset) },
            );
          }
          if (end < current.end) {
            cursor = end;
            break;
          }
          hole++;
          cursor = holes[hole]?.offset ?? 0;
        }
        if (hole >= holes.length) break;
      }
      for (; hole < holes.length; hole++, cursor = holes[hole]?.offset ?? 0) {
        if (cursor < holes[hole]!.end) remaining.push({ offset: cursor, end: holes[hole]!.end });
      }
      // Past this layer's own end it reads as zeros; whatever lies below is not reached.
      holes = [];
      for (const range of remaining) {
        if (range.end <= layer.sizeBytes) holes.push(range);
        else {
          if (range.offset < layer.sizeBytes) holes.push({ offset: range.offset, end: layer.sizeBytes });
          const zeroStart = Math.max(range.offset, layer.sizeBytes);
          resolved.push({ kind: ChainRunKind.Zero, offset: zeroStart, length: range.end - zeroStart });
        }
      }
    }
    for (const range of holes) resolved.push({ kind: ChainRunKind.Zero, offset: range.offset, length: range.end - range.offset });
    resolved.sort((a, b) => a.offset - b.offset);
    return mergeRuns(resolved);
  }

  async close(): Promise<void> {
    await Promise.all(this.layers.map((l) => l.close()));
  }
}

function mergeRuns(runs: ChainRun[]): ChainRun[] {
  const merged: ChainRun[] = [];
  for (const run of runs) {
    const last = merged.at(-1);
    if (last && last.offset + last.length === run.offset) {
      if (last.kind === ChainRunKind.Zero && run.kind === ChainRunKind.Zero) {
        last.length += run.length;
        continue;
      }
      if (last.kind === ChainRunKind.Data && run.kind === ChainRunKind.Data && last.layer === run.layer && last.hostOffset + last.length === run.hostOffset) {
        last.length += run.length;
        continue;
      }
    }
    merged.push({ ...run });
  }
  return merged;
}
