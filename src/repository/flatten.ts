/**
 * Flattens a QCOW2 chain into one standalone image. The chain is resolved once (Qcow2Chain.runs: per guest
 * range the topmost layer holding it), then copied in large windows: each window's data pieces are read from
 * their layers' files, short zero gaps inside are zero-filled, and the window goes out as one write — O_DIRECT
 * for raw output, through Qcow2Writer for qcow2 output. Long zero runs are never written (holes in a fresh raw
 * file, unallocated clusters in the qcow2). The output is fsynced before this returns.
 *
 * Chains our reader does not handle (compressed clusters, encryption, external data files, unknown
 * incompatible features, non-qcow2 backing files) fall back to `qemu-img convert`, with the reason logged.
 */
import { constants } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { AppError, ErrorCode, abortError, isAppError, throwIfAborted } from '../lib/errors.ts';
import { createLogger, type Logger } from '../lib/log.ts';
import { ChainRunKind, Qcow2Chain, type ChainRun } from '../qcow2/chain.ts';
import { Qcow2Writer, alignedBuffers, DEFAULT_CLUSTER_SIZE, writeAll } from '../qcow2/writer.ts';
import { fsError, fsyncPath } from './durable-fs.ts';
import { convertImage } from './qemu-img.ts';

export const FlattenMethod = { ChainReader: 'chain-reader', QemuImgConvert: 'qemu-img-convert' } as const;
export type FlattenMethod = (typeof FlattenMethod)[keyof typeof FlattenMethod];

export interface FlattenOptions {
  signal?: AbortSignal;
  /** Where the fallback to qemu-img is logged (default: a pino logger on stderr). */
  logger?: Logger;
  /** Guest bytes per write (multiple of 64 KiB; default 8 MiB). */
  windowBytes?: number;
  /** Windows being read or written at once (default 4). */
  windowsInFlight?: number;
  /** Zero runs at least this long are skipped; shorter ones inside a window are written as zeros (default 256 KiB). */
  holeBytes?: number;
  /** Read the chain's images with O_DIRECT (default true): restored images are rarely in the page cache. */
  directReads?: boolean;
}

export interface FlattenResult {
  method: FlattenMethod;
  /** Why qemu-img was used, when it was. */
  fallbackReason?: string;
  /** What the chain reader did (absent after a fallback). */
  copied?: {
    layers: number;
    sizeBytes: number;
    /** Guest bytes that came from data clusters. */
    dataBytes: number;
    /** Bytes written, zero-filled gaps inside windows included. */
    writtenBytes: number;
  };
}

/** One write of the output: guest [offset, offset+length), filled from `pieces` (offsets relative to the window), zeros elsewhere. */
export interface CopyWindow {
  offset: number;
  length: number;
  pieces: Array<{ at: number; length: number; layer: number; hostOffset: number }>;
}

const DIRECT_ALIGN = 4096;
const KiB = 1024;
const MiB = 1024 * KiB;

const roundDown = (n: number, to: number) => Math.floor(n / to) * to;
const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

/**
 * Cuts the data runs into windows of at most `windowBytes`, starting and ending on `align` boundaries (except
 * at the image end), so windows never share an aligned block. A window closes at a zero gap of at least
 * `holeBytes`; shorter gaps stay inside it.
 */
export function* copyWindows(runs: readonly ChainRun[], sizeBytes: number, options: { align: number; windowBytes: number; holeBytes: number }): Generator<CopyWindow> {
  const { align, windowBytes, holeBytes } = options;
  let window: (CopyWindow & { dataEnd: number }) | undefined;
  const close = (end: number): CopyWindow => {
    const done = { offset: window!.offset, length: Math.min(end, sizeBytes) - window!.offset, pieces: window!.pieces };
    window = undefined;
    return done;
  };
  for (const run of runs) {
    if (run.kind !== ChainRunKind.Data) continue;
    for (let at = run.offset; at < run.offset + run.length; ) {
      if (window && (roundDown(at, align) - roundUp(window.dataEnd, align) >= holeBytes || at >= window.offset + windowBytes)) {
        yield close(roundUp(window.dataEnd, align));
      }
      window ??= { offset: roundDown(at, align), length: 0, pieces: [], dataEnd: 0 };
      const limit = window.offset + windowBytes;
      const take = Math.min(run.offset + run.length, limit) - at;
      window.pieces.push({ at: at - window.offset, length: take, layer: run.layer, hostOffset: run.hostOffset + (at - run.offset) });
      window.dataEnd = at + take;
      at += take;
      if (at === limit) yield close(limit);
    }
  }
  if (window) yield close(roundUp(window.dataEnd, align));
}

interface OutputSink {
  /** Alignment of window boundaries this sink needs. */
  readonly align: number;
  /** Called in guest order; the returned promise settles when the bytes are written. */
  write(offset: number, data: Buffer): Promise<void>;
  /** Makes everything durable and closes. */
  finish(): Promise<void>;
  /** Closes and removes the partial output. */
  abandon(): Promise<void>;
}

/** A fresh sparse raw file: aligned windows go out with O_DIRECT, the unaligned tail through the page cache. */
class RawFileSink implements OutputSink {
  readonly align = DIRECT_ALIGN;
  private readonly path: string;
  private readonly file: FileHandle;
  private direct: FileHandle | undefined;

  private constructor(path: string, file: FileHandle, direct: FileHandle | undefined) {
    this.path = path;
    this.file = file;
    this.direct = direct;
  }

  static async create(path: string, sizeBytes: number): Promise<RawFileSink> {
    let file: FileHandle;
    try {
      file = await open(path, 'wx', 0o644);
    } catch (err) {
      throw fsError(err, 'create', path);
    }
    try {
      await file.truncate(sizeBytes);
    } catch (err) {
      await file.close();
      await rm(path, { force: true });
      throw fsError(err, 'size', path);
    }
    // tmpfs and some network filesystems refuse O_DIRECT: then every write takes the page cache.
    const direct = await open(path, constants.O_WRONLY | constants.O_DIRECT).catch(() => undefined);
    return new RawFileSink(path, file, direct);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    const alignedLength = offset % DIRECT_ALIGN === 0 ? roundDown(data.length, DIRECT_ALIGN) : 0;
    if (this.direct && alignedLength > 0) {
      try {
        await writeAll(this.direct, [data.subarray(0, alignedLength)], offset);
        if (alignedLength < data.length) await writeAll(this.file, [data.subarray(alignedLength)], offset + alignedLength);
        return;
      } catch (err) {
        // EINVAL: the filesystem wants a larger alignment than 4 KiB; the page cache takes everything from here.
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw fsError(err, 'write', this.path);
        const direct = this.direct;
        this.direct = undefined;
        await direct?.close().catch(() => undefined);
      }
    }
    try {
      await writeAll(this.file, [data], offset);
    } catch (err) {
      throw fsError(err, 'write', this.path);
    }
  }

  async finish(): Promise<void> {
    try {
      await this.file.sync();
    } catch (err) {
      throw fsError(err, 'fsync', this.path);
    } finally {
      await this.direct?.close().catch(() => undefined);
      await this.file.close().catch(() => undefined);
    }
  }

  async abandon(): Promise<void> {
    await this.direct?.close().catch(() => undefined);
    await this.file.close().catch(() => undefined);
    await rm(this.path, { force: true });
  }
}

/** A standalone qcow2 written by our writer; zero runs stay unallocated clusters, which read as zeros. */
class Qcow2FileSink implements OutputSink {
  readonly align: number;
  private readonly writer: Qcow2Writer;

  private constructor(writer: Qcow2Writer) {
    this.writer = writer;
    this.align = Math.max(DIRECT_ALIGN, writer.clusterSize);
  }

  static async create(path: string, sizeBytes: number): Promise<Qcow2FileSink> {
    return new Qcow2FileSink(await Qcow2Writer.create({ path, sizeBytes, clusterSize: DEFAULT_CLUSTER_SIZE }));
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.writer.writeData(offset, data);
  }

  async finish(): Promise<void> {
    await this.writer.finalize();
  }

  abandon(): Promise<void> {
    return this.writer.abandon();
  }
}

async function fillWindow(chain: Qcow2Chain, window: CopyWindow, buffer: Buffer): Promise<void> {
  let cursor = 0;
  for (const piece of window.pieces) {
    if (piece.at > cursor) buffer.fill(0, cursor, piece.at);
    cursor = piece.at + piece.length;
  }
  if (cursor < window.length) buffer.fill(0, cursor, window.length);
  await Promise.all(window.pieces.map((piece) => chain.layers[piece.layer]!.readHost(piece.hostOffset, piece.length, buffer, piece.at)));
}

/**
 * Copies the windows through a pool of aligned buffers: reads of several windows overlap, writes are issued in
 * guest order (the qcow2 writer places clusters in call order). The first failure stops new windows.
 */
async function copyChain(chain: Qcow2Chain, windows: Iterable<CopyWindow>, sink: OutputSink, options: { windowBytes: number; windowsInFlight: number; signal?: AbortSignal }): Promise<void> {
  const free = alignedBuffers(options.windowsInFlight, options.windowBytes);
  const running = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  let previousIssued: Promise<void> = Promise.resolve();
  for (const window of windows) {
    while (free.length === 0) await Promise.race(running);
    if (failure) break;
    if (options.signal?.aborted) {
      failure = { error: abortError(options.signal, 'flatten') };
      break;
    }
    const buffer = free.pop()!;
    const waitTurn = previousIssued;
    let issued!: () => void;
    previousIssued = new Promise<void>((done) => (issued = done));
    const task = (async () => {
      try {
        await fillWindow(chain, window, buffer);
        await waitTurn;
        if (failure) return;
        const written = sink.write(window.offset, buffer.subarray(0, window.length));
        issued();
        await written;
      } catch (error) {
        failure ??= { error };
      } finally {
        issued();
        free.push(buffer);
      }
    })();
    running.add(task);
    void task.finally(() => running.delete(task));
  }
  await Promise.all(running);
  if (failure) throw failure.error;
}

/**
 * Writes the flattened image of `sourcePath` (the top of a qcow2 chain) to `outPath`, which must not exist,
 * and fsyncs it. On failure nothing is left at `outPath`.
 */
export async function flattenImage(sourcePath: string, outPath: string, format: 'raw' | 'qcow2', options: FlattenOptions = {}): Promise<FlattenResult> {
  const { signal } = options;
  const windowBytes = options.windowBytes ?? 8 * MiB;
  if (windowBytes <= 0 || windowBytes % DEFAULT_CLUSTER_SIZE !== 0) {
    throw new AppError(ErrorCode.InvalidInput, `flatten window of ${windowBytes} bytes`, { hint: 'windowBytes must be a positive multiple of 64 KiB' });
  }
  throwIfAborted(signal, 'flatten');
  let chain: Qcow2Chain;
  let runs: ChainRun[];
  try {
    chain = await Qcow2Chain.open(sourcePath, { signal, directReads: options.directReads ?? true });
    try {
      runs = await chain.runs(signal);
    } catch (err) {
      await chain.close();
      throw err;
    }
  } catch (err) {
    if (!isAppError(err) || err.code !== ErrorCode.Unsupported) throw err;
    const fallbackReason = err.message;
    (options.logger ?? createLogger({ name: 'restore' })).warn({ source: sourcePath, reason: fallbackReason }, 'flattening with qemu-img convert: the chain reader cannot read this chain');
    try {
      await convertImage(sourcePath, outPath, format, signal);
      await fsyncPath(outPath);
    } catch (convertError) {
      await rm(outPath, { force: true });
      throw convertError;
    }
    return { method: FlattenMethod.QemuImgConvert, fallbackReason };
  }
  try {
    const sink = format === 'raw' ? await RawFileSink.create(outPath, chain.sizeBytes) : await Qcow2FileSink.create(outPath, chain.sizeBytes);
    let writtenBytes = 0;
    let dataBytes = 0;
    const windows = (function* () {
      for (const window of copyWindows(runs, chain.sizeBytes, { align: sink.align, windowBytes, holeBytes: options.holeBytes ?? 256 * KiB })) {
        writtenBytes += window.length;
        for (const piece of window.pieces) dataBytes += piece.length;
        yield window;
      }
    })();
    try {
      await copyChain(chain, windows, sink, { windowBytes, windowsInFlight: options.windowsInFlight ?? 4, signal });
      throwIfAborted(signal, 'flatten');
      await sink.finish();
    } catch (err) {
      await sink.abandon();
      throw err;
    }
    return { method: FlattenMethod.ChainReader, copied: { layers: chain.layers.length, sizeBytes: chain.sizeBytes, dataBytes, writtenBytes } };
  } finally {
    await chain.close();
  }
}
