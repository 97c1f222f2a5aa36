/**
 * A small, fast NBD client for the backup data path: fixed newstyle handshake, structured replies,
 * base:allocation block status, many requests in flight. Replies are parsed straight from one reused
 * receive buffer (`net.connect({onread})`) into the caller's buffers, so a READ costs one copy.
 */
import net from 'node:net';
import { AppError, ErrorCode, abortError, throwIfAborted } from '../lib/errors.ts';
import {
  AllocationFlag,
  HandshakeFlag,
  NbdCommand,
  NbdInfo,
  NbdMagic,
  NbdOption,
  OPTION_REPLY_ERROR_BIT,
  OptionReply,
  REPLY_FLAG_DONE,
  REQUEST_HEADER_BYTES,
  ReplyChunk,
  SIMPLE_REPLY_BYTES,
  STRUCTURED_REPLY_BYTES,
  TransmissionFlag,
  nbdErrnoNames,
} from './protocol.ts';

export type NbdEndpoint = { socketPath: string } | { host: string; port: number };

export interface NbdConnectOptions {
  endpoint: NbdEndpoint;
  /** Export selected with NBD_OPT_GO; qemu-nbd's default export is "". */
  exportName?: string;
  /** Meta contexts to negotiate; default base:allocation. Pass [] to skip. */
  metaContexts?: string[];
  /** Size of the one reused socket receive buffer. */
  receiveBufferBytes?: number;
  /** Aborting closes the connection and fails every request in flight. */
  signal?: AbortSignal;
}

export interface NbdBlockSize {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface NbdExportInfo {
  sizeBytes: number;
  transmissionFlags: number;
  blockSize: NbdBlockSize;
  structuredReplies: boolean;
  /** Negotiated meta context name → id on this connection. */
  metaContexts: ReadonlyMap<string, number>;
}

export interface ByteRange {
  offset: number;
  length: number;
}

export interface NbdExtent extends ByteRange {
  /** base:allocation flags: AllocationFlag.Hole | AllocationFlag.Zero. */
  flags: number;
}

export interface NbdReadResult {
  /** Parts of the read the server sent as holes (already zero-filled in the target), absolute offsets. */
  holes: ByteRange[];
}

const DEFAULT_RECEIVE_BUFFER = 4 * 1024 * 1024;
/** Largest BLOCK_STATUS span asked at once: the length field is u32, and imageio uses 2 GiB steps too. */
const MAX_BLOCK_STATUS_SPAN = 2 ** 31;
const MAX_OPTION_REPLY_BYTES = 64 * 1024;
/** Payload left in a READ from which the next socket read goes straight into the caller's buffer. */
const DIRECT_RECEIVE_MIN = 64 * 1024;

const Phase = { Handshake: 0, Transmission: 1, Closed: 2 } as const;
type Phase = (typeof Phase)[keyof typeof Phase];

/** What the reply parser does with the next `want` bytes. */
const Sink = { Header: 0, Scratch: 1, Target: 2 } as const;
type Sink = (typeof Sink)[keyof typeof Sink];

interface PendingRequest {
  cookie: number;
  command: number;
  offset: number;
  length: number;
  /** Null once the caller gave up (abort): later payload is discarded. */
  target: Buffer | null;
  targetStart: number;
  holes: ByteRange[];
  extents: NbdExtent[];
  /** BLOCK_STATUS: the meta context whose chunk we keep. */
  contextId: number | undefined;
  error: AppError | undefined;
  settled: boolean;
  resolve: () => void;
  reject: (err: AppError) => void;
  detachSignal: (() => void) | undefined;
}

function endpointText(endpoint: NbdEndpoint): string {
  return 'socketPath' in endpoint ? `unix:${endpoint.socketPath}` : `${endpoint.host}:${endpoint.port}`;
}

function dataPathError(message: string, options: { retryable?: boolean; hint?: string; cause?: unknown } = {}): AppError {
  return new AppError(ErrorCode.DataPath, message, options);
}

export class NbdClient {
  readonly info: NbdExportInfo;
  readonly endpoint: NbdEndpoint;
  private readonly socket: net.Socket;
  private readonly conn: Connection;

  private constructor(socket: net.Socket, conn: Connection, info: NbdExportInfo, endpoint: NbdEndpoint) {
    this.socket = socket;
    this.conn = conn;
    this.info = info;
    this.endpoint = endpoint;
  }

  static async connect(options: NbdConnectOptions): Promise<NbdClient> {
    const { endpoint, signal } = options;
    throwIfAborted(signal, `NBD connect to ${endpointText(endpoint)}`);
    const conn = new Connection(endpointText(endpoint), Buffer.allocUnsafe(options.receiveBufferBytes ?? DEFAULT_RECEIVE_BUFFER));
    // Node asks for the buffer of each socket read: large READ payloads are received straight into the caller's buffer.
    const onread = { buffer: () => conn.nextReceiveBuffer(), callback: (n: number, buf: Uint8Array) => conn.onBytes(buf as Buffer, n) };
    const socket =
      'socketPath' in endpoint
        ? net.connect({ path: endpoint.socketPath, onread })
        : net.connect({ host: endpoint.host, port: endpoint.port, onread, noDelay: true });
    conn.attach(socket);
    const onAbort = () => conn.fail(abortError(signal, `NBD connection to ${endpointText(endpoint)}`));
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await conn.connected();
      const info = await conn.handshake(options.exportName ?? '', options.metaContexts ?? ['base:allocation']);
      const client = new NbdClient(socket, conn, info, endpoint);
      if (signal) conn.onClose(() => signal.removeEventListener('abort', onAbort));
      return client;
    } catch (err) {
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      throw err;
    }
  }

  get sizeBytes(): number {
    return this.info.sizeBytes;
  }

  /** True when the server allows several connections to the export to be used at once. */
  get canMultiConn(): boolean {
    return (this.info.transmissionFlags & TransmissionFlag.CanMultiConn) !== 0;
  }

  /**
   * Reads [offset, offset+length) into target[targetStart...]. Holes arrive as OFFSET_HOLE chunks and are
   * zero-filled; requests above the server's maximum block size are split.
   */
  async read(offset: number, length: number, target: Buffer, options: { targetStart?: number; signal?: AbortSignal } = {}): Promise<NbdReadResult> {
    const targetStart = options.targetStart ?? 0;
    this.checkRange(offset, length, 'read');
    if (targetStart + length > target.length) {
      throw new AppError(ErrorCode.InvalidInput, `NBD read of ${length} bytes does not fit the target buffer (${target.length - targetStart} bytes free)`, {
        hint: 'pass a target buffer at least as long as the read',
      });
    }
    const max = this.info.blockSize.maximum;
    if (length <= max) return { holes: await this.conn.request(NbdCommand.Read, offset, length, target, targetStart, options.signal).then((p) => p.holes) };
    const parts: Promise<PendingRequest>[] = [];
    for (let done = 0; done < length; done += max) {
      const part = Math.min(max, length - done);
      parts.push(this.conn.request(NbdCommand.Read, offset + done, part, target, targetStart + done, options.signal));
    }
    const settled = await Promise.all(parts);
    return { holes: settled.flatMap((p) => p.holes) };
  }

  /** One BLOCK_STATUS request for a meta context (default base:allocation); extents clipped to the request. */
  async blockStatus(offset: number, length: number, options: { context?: string; signal?: AbortSignal } = {}): Promise<NbdExtent[]> {
    const contextName = options.context ?? 'base:allocation';
    const contextId = this.info.metaContexts.get(contextName);
    if (contextId === undefined) {
      throw new AppError(ErrorCode.Unsupported, `NBD meta context ${contextName} was not negotiated with ${endpointText(this.endpoint)}`, {
        hint: `connect with metaContexts including "${contextName}" (qemu-nbd needs -A for qemu:allocation-depth, -B for bitmaps)`,
      });
    }
    this.checkRange(offset, length, 'block status');
    const span = Math.min(length, MAX_BLOCK_STATUS_SPAN);
    const pending = await this.conn.request(NbdCommand.BlockStatus, offset, span, null, 0, options.signal, contextId);
    return pending.extents;
  }

  /**
   * Walks the whole export (or a range) with BLOCK_STATUS and yields extents in order, neighbours with equal
   * flags merged, never running past the range.
   */
  async *extents(options: { offset?: number; length?: number; context?: string; signal?: AbortSignal } = {}): AsyncGenerator<NbdExtent> {
    const start = options.offset ?? 0;
    const end = start + (options.length ?? this.sizeBytes - start);
    let cursor = start;
    let held: NbdExtent | undefined;
    while (cursor < end) {
      const batch = await this.blockStatus(cursor, end - cursor, options);
      if (batch.length === 0) throw dataPathError(`NBD server returned no extents at offset ${cursor}`, { hint: 'the export is inconsistent; check the qemu-nbd log' });
      for (const extent of batch) {
        if (held && held.flags === extent.flags && held.offset + held.length === extent.offset) {
          held.length += extent.length;
        } else {
          if (held) yield held;
          held = { ...extent };
        }
        cursor = extent.offset + extent.length;
      }
    }
    if (held) yield held;
  }

  async flush(signal?: AbortSignal): Promise<void> {
    if ((this.info.transmissionFlags & TransmissionFlag.SendFlush) === 0) return;
    await this.conn.request(NbdCommand.Flush, 0, 0, null, 0, signal);
  }

  /** Sends NBD_CMD_DISC after the requests in flight and closes the socket. Idempotent. */
  async close(): Promise<void> {
    await this.conn.disconnect();
  }

  /** Closes immediately, failing requests in flight. */
  destroy(): void {
    this.conn.fail(dataPathError(`NBD connection to ${endpointText(this.endpoint)} was closed by the client`));
    this.socket.destroy();
  }

  private checkRange(offset: number, length: number, what: string): void {
    const { minimum } = this.info.blockSize;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.sizeBytes) {
      throw new AppError(ErrorCode.InvalidInput, `NBD ${what} [${offset}, +${length}) is outside the export (size ${this.sizeBytes})`, {
        hint: 'offset and length must be non-negative and end within the export size',
      });
    }
    if (offset % minimum !== 0 || (length % minimum !== 0 && offset + length !== this.sizeBytes)) {
      throw new AppError(ErrorCode.InvalidInput, `NBD ${what} [${offset}, +${length}) is not aligned to the server's minimum block size ${minimum}`, {
        hint: `align offset and length to ${minimum} bytes`,
      });
    }
  }
}

/** The socket, the handshake and the reply parser of one connection. */
class Connection {
  private readonly name: string;
  private socket: net.Socket | undefined;
  private phase: Phase = Phase.Handshake;
  private failure: AppError | undefined;
  private readonly pending = new Map<number, PendingRequest>();
  private nextCookie = 1;
  private structured = false;
  private readonly closeCallbacks: Array<() => void> = [];
  private closed = false;
  private corked = false;

  // Handshake: bytes are copied out of the reused receive buffer and consumed by `take`.
  private handshakeChunks: Buffer[] = [];
  private handshakeBytes = 0;
  private handshakeWaiter: (() => void) | undefined;

  // Reply parser state.
  private sink: Sink = Sink.Header;
  private want = 4;
  private readonly header = Buffer.alloc(STRUCTURED_REPLY_BYTES);
  private headerFill = 0;
  private scratch = Buffer.alloc(64);
  private scratchFill = 0;
  private onScratchFull: () => void = () => undefined;
  private current: PendingRequest | undefined;
  private chunkFlags = 0;
  private targetPos = 0;
  private afterTarget: () => void = () => undefined;

  private readonly receiveBuffer: Buffer;
  /** The caller's buffer slice the pending socket read writes into, if any. */
  private direct: Buffer | undefined;

  constructor(name: string, receiveBuffer: Buffer) {
    this.name = name;
    this.receiveBuffer = receiveBuffer;
  }

  nextReceiveBuffer(): Buffer {
    const target = this.current?.target;
    if (this.phase === Phase.Transmission && this.sink === Sink.Target && target && this.want >= DIRECT_RECEIVE_MIN) {
      this.direct = target.subarray(this.targetPos, this.targetPos + this.want);
      return this.direct;
    }
    this.direct = undefined;
    return this.receiveBuffer;
  }

  attach(socket: net.Socket): void {
    this.socket = socket;
    socket.on('error', (err) => this.fail(this.socketError(err)));
    socket.on('close', () => {
      this.fail(dataPathError(`NBD server ${this.name} closed the connection`, { hint: 'the export went away (qemu-nbd stopped or crashed); see its stderr' }));
      this.closed = true;
      for (const callback of this.closeCallbacks.splice(0)) callback();
    });
  }

  onClose(callback: () => void): void {
    if (this.closed) callback();
    else this.closeCallbacks.push(callback);
  }

  connected(): Promise<void> {
    const socket = this.requireSocket();
    return new Promise((resolve, reject) => {
      if (this.failure) return reject(this.failure);
      const onConnect = () => {
        cleanup();
        resolve();
      };
      const onClose = () => {
        cleanup();
        reject(this.failure ?? dataPathError(`NBD connection to ${this.name} closed before it was established`, { retryable: true }));
      };
      const cleanup = () => {
        socket.off('connect', onConnect);
        socket.off('close', onClose);
      };
      socket.once('connect', onConnect);
      socket.once('close', onClose);
    });
  }

  /** Fixed newstyle handshake: structured replies, meta contexts, then GO with INFO_BLOCK_SIZE. */
  async handshake(exportName: string, metaContexts: string[]): Promise<NbdExportInfo> {
    const greeting = await this.take(18);
    if (greeting.readBigUInt64BE(0) !== NbdMagic.Init || greeting.readBigUInt64BE(8) !== NbdMagic.Opt) {
      throw dataPathError(`${this.name} is not a newstyle NBD server`, { hint: 'point the endpoint at a qemu-nbd or nbdkit socket' });
    }
    const serverFlags = greeting.readUInt16BE(16);
    if ((serverFlags & HandshakeFlag.FixedNewstyle) === 0) {
      throw new AppError(ErrorCode.Unsupported, `NBD server ${this.name} does not speak fixed newstyle`, { hint: 'use qemu-nbd 2.6 or newer' });
    }
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(HandshakeFlag.FixedNewstyle | (serverFlags & HandshakeFlag.NoZeroes));
    this.write(clientFlags);

    const structured = await this.option(NbdOption.StructuredReply, Buffer.alloc(0));
    this.structured = structured.every((r) => r.type === OptionReply.Ack) && structured.length > 0;

    const contexts = new Map<string, number>();
    if (this.structured && metaContexts.length > 0) {
      const nameBytes = Buffer.from(exportName);
      const queries = metaContexts.map((q) => Buffer.from(q));
      const payload = Buffer.alloc(4 + nameBytes.length + 4 + queries.reduce((n, q) => n + 4 + q.length, 0));
      let at = payload.writeUInt32BE(nameBytes.length, 0);
      at += nameBytes.copy(payload, at);
      at = payload.writeUInt32BE(queries.length, at);
      for (const q of queries) {
        at = payload.writeUInt32BE(q.length, at);
        at += q.copy(payload, at);
      }
      for (const reply of await this.option(NbdOption.SetMetaContext, payload)) {
        if (reply.type === OptionReply.MetaContext && reply.data.length >= 4) {
          contexts.set(reply.data.subarray(4).toString(), reply.data.readUInt32BE(0));
        }
      }
    }

    const nameBytes = Buffer.from(exportName);
    const go = Buffer.alloc(4 + nameBytes.length + 2 + 2);
    go.writeUInt32BE(nameBytes.length, 0);
    nameBytes.copy(go, 4);
    go.writeUInt16BE(1, 4 + nameBytes.length);
    go.writeUInt16BE(NbdInfo.BlockSize, 6 + nameBytes.length);
    let sizeBytes: number | undefined;
    let transmissionFlags = 0;
    const blockSize: NbdBlockSize = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
    for (const reply of await this.option(NbdOption.Go, go, exportName)) {
      if (reply.type !== OptionReply.Info || reply.data.length < 2) continue;
      const infoType = reply.data.readUInt16BE(0);
      if (infoType === NbdInfo.Export && reply.data.length >= 12) {
        sizeBytes = Number(reply.data.readBigUInt64BE(2));
        transmissionFlags = reply.data.readUInt16BE(10);
      } else if (infoType === NbdInfo.BlockSize && reply.data.length >= 14) {
        blockSize.minimum = reply.data.readUInt32BE(2);
        blockSize.preferred = reply.data.readUInt32BE(6);
        blockSize.maximum = reply.data.readUInt32BE(10);
      }
    }
    if (sizeBytes === undefined || !Number.isSafeInteger(sizeBytes)) {
      throw dataPathError(`NBD server ${this.name} did not report the export size`, { hint: 'the server violates the NBD protocol; use qemu-nbd' });
    }
    if (this.handshakeBytes !== 0) throw dataPathError(`NBD server ${this.name} sent unexpected bytes after the handshake`);
    this.phase = Phase.Transmission;
    return { sizeBytes, transmissionFlags, blockSize, structuredReplies: this.structured, metaContexts: contexts };
  }

  request(command: number, offset: number, length: number, target: Buffer | null, targetStart: number, signal: AbortSignal | undefined, contextId?: number): Promise<PendingRequest> {
    if (this.failure) return Promise.reject(this.failure);
    if (signal?.aborted) return Promise.reject(abortError(signal, `NBD request to ${this.name}`));
    const cookie = this.nextCookie;
    this.nextCookie = this.nextCookie === 0xffffffff ? 1 : this.nextCookie + 1;
    return new Promise<PendingRequest>((resolve, reject) => {
      const pending: PendingRequest = {
        cookie,
        command,
        offset,
        length,
        target,
        targetStart,
        holes: [],
        extents: [],
        contextId,
        error: undefined,
        settled: false,
        resolve: () => resolve(pending),
        reject,
        detachSignal: undefined,
      };
      if (signal) {
        // The reply still arrives later; the request stays registered but stops touching the caller's buffer.
        const onAbort = () => {
          const err = abortError(signal, `NBD request to ${this.name}`);
          // A socket read may already be aimed at the caller's buffer; only closing the socket stops it.
          if (this.direct && this.current === pending) return this.fail(err);
          pending.target = null;
          this.settle(pending, err);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        pending.detachSignal = () => signal.removeEventListener('abort', onAbort);
      }
      this.pending.set(cookie, pending);
      const header = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
      header.writeUInt32BE(NbdMagic.Request, 0);
      header.writeUInt16BE(0, 4);
      header.writeUInt16BE(command, 6);
      header.writeUInt32BE(0, 8);
      header.writeUInt32BE(cookie, 12);
      header.writeBigUInt64BE(BigInt(offset), 16);
      header.writeUInt32BE(length, 24);
      this.write(header);
    });
  }

  async disconnect(): Promise<void> {
    const socket = this.requireSocket();
    if (this.phase === Phase.Transmission && !this.failure) {
      const header = Buffer.alloc(REQUEST_HEADER_BYTES);
      header.writeUInt32BE(NbdMagic.Request, 0);
      header.writeUInt16BE(NbdCommand.Disconnect, 6);
      this.write(header);
    }
    this.phase = Phase.Closed;
    if (this.closed) return;
    await new Promise<void>((resolve) => {
      this.onClose(resolve);
      socket.end();
    });
  }

  /** Fails the connection once: every request in flight is rejected with `err`. */
  fail(err: AppError): void {
    if (!this.failure) this.failure = err;
    for (const pending of [...this.pending.values()]) {
      pending.target = null;
      this.settle(pending, this.failure);
      this.pending.delete(pending.cookie);
    }
    this.handshakeWaiter?.();
    if (err.code === ErrorCode.Aborted || this.direct) this.socket?.destroy();
  }

  /** `onread` callback: `buf` is the reused receive buffer, valid only during this call. */
  onBytes(buf: Buffer, n: number): boolean {
    if (this.phase === Phase.Handshake) {
      this.handshakeChunks.push(Buffer.from(buf.subarray(0, n)));
      this.handshakeBytes += n;
      this.handshakeWaiter?.();
      return true;
    }
    try {
      if (this.direct && buf === this.direct) {
        this.direct = undefined;
        this.targetPos += n;
        this.want -= n;
        if (this.want === 0) this.afterTarget();
      } else {
        this.parse(buf, n);
      }
    } catch (err) {
      const appErr = err instanceof AppError ? err : dataPathError(`NBD reply from ${this.name} could not be parsed`, { cause: err });
      this.fail(appErr);
      this.socket?.destroy();
    }
    return true;
  }

  private parse(buf: Buffer, n: number): void {
    let pos = 0;
    while (pos < n) {
      if (this.sink === Sink.Header) {
        const take = Math.min(this.want - this.headerFill, n - pos);
        buf.copy(this.header, this.headerFill, pos, pos + take);
        this.headerFill += take;
        pos += take;
        if (this.headerFill === this.want) this.onHeaderBytes();
      } else if (this.sink === Sink.Scratch) {
        const take = Math.min(this.want - this.scratchFill, n - pos);
        buf.copy(this.scratch, this.scratchFill, pos, pos + take);
        this.scratchFill += take;
        pos += take;
        if (this.scratchFill === this.want) this.onScratchFull();
      } else {
        const take = Math.min(this.want, n - pos);
        const target = this.current?.target;
        if (target) buf.copy(target, this.targetPos, pos, pos + take);
        this.targetPos += take;
        this.want -= take;
        pos += take;
        if (this.want === 0) this.afterTarget();
      }
    }
  }

  private expectHeader(): void {
    this.sink = Sink.Header;
    this.want = 4;
    this.headerFill = 0;
    this.current = undefined;
  }

  private collect(bytes: number, then: () => void): void {
    if (bytes === 0) return then();
    if (this.scratch.length < bytes) this.scratch = Buffer.allocUnsafe(bytes);
    this.sink = Sink.Scratch;
    this.want = bytes;
    this.scratchFill = 0;
    this.onScratchFull = then;
  }

  private onHeaderBytes(): void {
    const magic = this.header.readUInt32BE(0);
    if (this.want === 4) {
      if (magic === NbdMagic.SimpleReply) this.want = SIMPLE_REPLY_BYTES;
      else if (magic === NbdMagic.StructuredReply) this.want = STRUCTURED_REPLY_BYTES;
      else throw dataPathError(`NBD server ${this.name} sent a reply with bad magic 0x${magic.toString(16)}`);
      return;
    }
    const cookie = this.header.readUInt32BE(8) * 2 ** 32 + this.header.readUInt32BE(12);
    const pending = this.pending.get(cookie);
    if (!pending) throw dataPathError(`NBD server ${this.name} answered unknown cookie ${cookie}`);
    this.current = pending;
    if (magic === NbdMagic.SimpleReply) {
      const errno = this.header.readUInt32BE(4);
      if (errno !== 0) return this.finish(pending, this.serverError(pending, errno, ''));
      if (pending.command === NbdCommand.Read && !this.structured) {
        return this.intoTarget(pending, pending.offset, pending.length, () => this.finish(pending, undefined));
      }
      return this.finish(pending, undefined);
    }
    this.chunkFlags = this.header.readUInt16BE(4);
    const type = this.header.readUInt16BE(6);
    const length = this.header.readUInt32BE(16);
    switch (type) {
      case ReplyChunk.None:
        return this.endChunk(pending);
      case ReplyChunk.OffsetData:
        if (length < 8) throw dataPathError(`NBD server ${this.name} sent a short OFFSET_DATA chunk`);
        return this.collect(8, () => {
          const offset = Number(this.scratch.readBigUInt64BE(0));
          this.intoTarget(pending, offset, length - 8, () => this.endChunk(pending));
        });
      case ReplyChunk.OffsetHole:
        return this.collect(length, () => {
          const offset = Number(this.scratch.readBigUInt64BE(0));
          const size = this.scratch.readUInt32BE(8);
          this.checkInside(pending, offset, size);
          if (pending.target) pending.target.fill(0, pending.targetStart + offset - pending.offset, pending.targetStart + offset - pending.offset + size);
          pending.holes.push({ offset, length: size });
          this.endChunk(pending);
        });
      case ReplyChunk.BlockStatus:
        return this.collect(length, () => {
          this.onBlockStatus(pending, length);
          this.endChunk(pending);
        });
      default:
        if ((type & 0x8000) === 0) throw dataPathError(`NBD server ${this.name} sent unknown reply chunk type ${type}`);
        return this.collect(length, () => {
          const errno = length >= 4 ? this.scratch.readUInt32BE(0) : 5;
          const messageLength = length >= 6 ? this.scratch.readUInt16BE(4) : 0;
          const message = this.scratch.subarray(6, 6 + Math.min(messageLength, length - 6)).toString();
          pending.error ??= this.serverError(pending, errno, message);
          this.endChunk(pending);
        });
    }
  }

  private onBlockStatus(pending: PendingRequest, length: number): void {
    // The server sends one chunk per negotiated context; keep only the one asked for.
    if (length < 4 || this.scratch.readUInt32BE(0) !== pending.contextId) return;
    let cursor = pending.offset;
    const end = pending.offset + pending.length;
    for (let at = 4; at + 8 <= length && cursor < end; at += 8) {
      const extentLength = this.scratch.readUInt32BE(at);
      const flags = this.scratch.readUInt32BE(at + 4);
      const clipped = Math.min(extentLength, end - cursor);
      if (clipped === 0) break;
      pending.extents.push({ offset: cursor, length: clipped, flags });
      cursor += clipped;
    }
  }

  private intoTarget(pending: PendingRequest, offset: number, length: number, then: () => void): void {
    this.checkInside(pending, offset, length);
    this.sink = Sink.Target;
    this.want = length;
    this.targetPos = pending.targetStart + offset - pending.offset;
    this.afterTarget = then;
    if (length === 0) then();
  }

  private checkInside(pending: PendingRequest, offset: number, length: number): void {
    if (offset < pending.offset || offset + length > pending.offset + pending.length) {
      throw dataPathError(`NBD server ${this.name} sent bytes [${offset}, +${length}) outside request [${pending.offset}, +${pending.length})`);
    }
  }

  private endChunk(pending: PendingRequest): void {
    if (this.chunkFlags & REPLY_FLAG_DONE) this.finish(pending, pending.error);
    else this.expectHeader();
  }

  private finish(pending: PendingRequest, error: AppError | undefined): void {
    this.pending.delete(pending.cookie);
    this.settle(pending, error);
    this.expectHeader();
  }

  private settle(pending: PendingRequest, error: AppError | undefined): void {
    if (pending.settled) return;
    pending.settled = true;
    pending.detachSignal?.();
    if (error) pending.reject(error);
    else pending.resolve();
  }

  private serverError(pending: PendingRequest, errno: number, message: string): AppError {
    const name = nbdErrnoNames[errno] ?? `errno ${errno}`;
    return dataPathError(`NBD server ${this.name} failed command ${pending.command} at [${pending.offset}, +${pending.length}): ${name}${message ? ` (${message})` : ''}`, {
      hint: errno === 22 ? 'the request is outside the export or misaligned' : 'see the qemu-nbd stderr and the source storage',
    });
  }

  private socketError(err: Error & { code?: string }): AppError {
    const beforeTransmission = this.phase === Phase.Handshake;
    return dataPathError(`NBD connection to ${this.name} failed: ${err.message}`, {
      // Nothing was read yet during connect/handshake, so trying again is safe; mid-copy the caller decides.
      retryable: beforeTransmission,
      hint: err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? 'start qemu-nbd on that socket/port first' : 'check that the NBD server is still running',
      cause: err,
    });
  }

  private requireSocket(): net.Socket {
    if (!this.socket) throw new AppError(ErrorCode.Internal, 'NBD connection used before its socket was attached');
    return this.socket;
  }

  /**
   * Requests issued in the same tick (a buffer's worth of small incremental reads) leave in one writev: the
   * socket is corked at the first and uncorked on the next tick, instead of one system call per 28-byte header.
   */
  private write(bytes: Buffer): void {
    const socket = this.requireSocket();
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(() => {
        this.corked = false;
        socket.uncork();
      });
    }
    socket.write(bytes);
  }

  private async option(option: number, data: Buffer, exportName?: string): Promise<Array<{ type: number; data: Buffer }>> {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(NbdMagic.Opt, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([header, data]));
    const replies: Array<{ type: number; data: Buffer }> = [];
    for (;;) {
      const head = await this.take(20);
      if (head.readBigUInt64BE(0) !== NbdMagic.OptReply) throw dataPathError(`NBD server ${this.name} sent a bad option reply`);
      const type = head.readUInt32BE(12);
      const length = head.readUInt32BE(16);
      if (length > MAX_OPTION_REPLY_BYTES) throw dataPathError(`NBD server ${this.name} sent an oversized option reply (${length} bytes)`);
      const body = await this.take(length);
      if (type & OPTION_REPLY_ERROR_BIT) {
        if (option === NbdOption.Go) {
          throw new AppError(ErrorCode.NotFound, `NBD server ${this.name} refused export "${exportName ?? ''}": ${body.toString() || `error ${type - OPTION_REPLY_ERROR_BIT}`}`, {
            hint: 'check the export name (qemu-nbd -x NAME) and that the server allows another client (-e/--shared)',
          });
        }
        return []; // an optional feature the server does not support
      }
      if (type === OptionReply.Ack) return [...replies, { type, data: body }];
      replies.push({ type, data: body });
    }
  }

  private async take(bytes: number): Promise<Buffer> {
    while (this.handshakeBytes < bytes) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.handshakeWaiter = resolve));
      this.handshakeWaiter = undefined;
    }
    const all = this.handshakeChunks.length === 1 ? this.handshakeChunks[0]! : Buffer.concat(this.handshakeChunks);
    const out = all.subarray(0, bytes);
    const rest = all.subarray(bytes);
    this.handshakeChunks = rest.length > 0 ? [rest] : [];
    this.handshakeBytes = rest.length;
    return out;
  }
}

export { AllocationFlag };
