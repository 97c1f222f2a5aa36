/**
 * Runs `qemu-nbd --read-only` over a disk snapshot (a file, an iscsi:// URL, or --image-opts) on a private
 * unix socket, and makes sure it never outlives us: stop(), an abort, or our process exiting kills it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { AppError, ErrorCode, abortError } from '../lib/errors.ts';
import { HandshakeFlag, NbdMagic, NbdOption } from './protocol.ts';

/**
 * glibc thresholds that stop qemu-nbd from mmapping and unmapping a fresh buffer per large request; measured
 * here as 2-10× more read throughput (research/datapath.md §1.3).
 */
export const QEMU_NBD_MALLOC_ENV = {
  MALLOC_MMAP_THRESHOLD_: '67108864',
  MALLOC_TRIM_THRESHOLD_: '268435456',
} as const;

export const QemuNbdOptionsSchema = z.object({
  /** A file path, a URL qemu understands (iscsi://portal/iqn/lun, nbd://…), or an --image-opts string. */
  image: z.string().min(1),
  format: z.enum(['raw', 'qcow2']).default('raw'),
  /** Treat `image` as a block-layer option string (driver=raw,file.driver=iscsi,…); `format` is then ignored. */
  imageOpts: z.boolean().default(false),
  /** Simultaneous clients allowed (qemu-nbd --shared). */
  shared: z.number().int().min(1).max(64).default(4),
  exportName: z.string().default(''),
  /** Also export qemu:allocation-depth (holes of a qcow2 layer vs. its backing chain). */
  allocationDepth: z.boolean().default(false),
  startTimeoutMs: z.number().int().positive().default(30_000),
  qemuNbdPath: z.string().default('qemu-nbd'),
});
export type QemuNbdOptions = z.input<typeof QemuNbdOptionsSchema>;

export interface QemuNbdServer {
  readonly socketPath: string;
  readonly exportName: string;
  readonly pid: number;
  /** The last few KiB qemu-nbd wrote to stderr. */
  stderr(): string;
  /** Resolves when the process has exited (stopped, killed or crashed). */
  readonly exited: Promise<void>;
  /** SIGTERM, then SIGKILL after a grace period; removes the socket directory. Idempotent. */
  stop(): Promise<void>;
}

const STDERR_KEEP_BYTES = 8192;
const STOP_GRACE_MS = 5000;
const live = new Set<ChildProcess>();
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((candidate) => existsSync(candidate));
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' handlers must be synchronous: a plain SIGKILL is all we can do there.
  process.on('exit', () => {
    for (const child of live) child.kill('SIGKILL');
  });
}

export async function startQemuNbd(input: QemuNbdOptions, signal?: AbortSignal): Promise<QemuNbdServer> {
  const options = QemuNbdOptionsSchema.parse(input);
  if (signal?.aborted) throw abortError(signal, 'start qemu-nbd');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'qemu-nbd-'));
  const socketPath = path.join(dir, 'nbd.sock');
  const args = ['--read-only', '--persistent', `--shared=${options.shared}`, `--socket=${socketPath}`, `--export-name=${options.exportName}`];
  if (options.allocationDepth) args.push('--allocation-depth');
  if (options.imageOpts) args.push('--image-opts', options.image);
  else args.push('-f', options.format, options.image);

  installExitHook();
  // setpriv (util-linux) makes the kernel kill qemu-nbd if we die, even by SIGKILL, where no hook runs.
  const [command, argv] = SETPRIV ? [SETPRIV, ['--pdeathsig', 'SIGKILL', options.qemuNbdPath, ...args]] : [options.qemuNbdPath, args];
  const child = spawn(command, argv, {
    env: { ...process.env, ...QEMU_NBD_MALLOC_ENV },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  live.add(child);
  let stderrText = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    stderrText = (stderrText + chunk).slice(-STDERR_KEEP_BYTES);
  });
  let exitDescription: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, sig) => {
      exitDescription = sig ? `killed by ${sig}` : `exited with code ${code}`;
      live.delete(child);
      resolve();
    });
    child.once('error', (err) => {
      exitDescription = `could not be started: ${err.message}`;
      live.delete(child);
      resolve();
    });
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      if (exitDescription === undefined) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    })());

  const onAbort = () => void stop();
  signal?.addEventListener('abort', onAbort, { once: true });
  void exited.then(() => signal?.removeEventListener('abort', onAbort));

  const deadline = Date.now() + options.startTimeoutMs;
  // Until the socket exists a probe fails at once (once it exists the probe waits for qemu-nbd's greeting).
  // qemu-nbd serves a file some 8-10 ms after the spawn here: probing every millisecond for the first 50 ms sees
  // it about 2 ms sooner than a doubling delay did; after that every 20 ms (an iSCSI login can take seconds).
  const probeEveryMsUntil = Date.now() + 50;
  for (;;) {
    if (signal?.aborted) {
      await stop();
      throw abortError(signal, 'start qemu-nbd');
    }
    if (exitDescription !== undefined) {
      await stop();
      throw new AppError(ErrorCode.DataPath, `qemu-nbd ${exitDescription} before serving ${options.image}: ${stderrText.trim() || '(no stderr)'}`, {
        hint: 'check that the image path or URL exists and is readable, and that its format is right (--format raw|qcow2)',
      });
    }
    if (await accepts(socketPath)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new AppError(ErrorCode.Timeout, `qemu-nbd did not accept connections on ${socketPath} within ${options.startTimeoutMs} ms: ${stderrText.trim()}`, {
        retryable: true,
        hint: 'a slow iSCSI login can delay qemu-nbd; raise startTimeoutMs',
      });
    }
    await sleep(Date.now() < probeEveryMsUntil ? 1 : 20);
  }

  return {
    socketPath,
    exportName: options.exportName,
    pid: child.pid ?? -1,
    stderr: () => stderrText,
    exited,
    stop,
  };
}

/**
 * True once qemu-nbd serves: it greets with NBDMAGIC only after opening the image (the socket itself exists
 * earlier, even when the open then fails). The probe leaves politely with NBD_OPT_ABORT so that qemu-nbd
 * logs nothing.
 */
function accepts(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect({ path: socketPath });
    let received = Buffer.alloc(0);
    const done = (ok: boolean) => {
      probe.removeAllListeners('data');
      resolve(ok);
    };
    probe.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 18) return;
      const greeted = received.readBigUInt64BE(0) === NbdMagic.Init;
      if (greeted) {
        const bye = Buffer.alloc(4 + 16);
        bye.writeUInt32BE(HandshakeFlag.FixedNewstyle, 0);
        bye.writeBigUInt64BE(NbdMagic.Opt, 4);
        bye.writeUInt32BE(NbdOption.Abort, 12);
        probe.end(bye);
      } else {
        probe.destroy();
      }
      done(greeted);
    });
    probe.once('error', () => done(false));
    probe.once('close', () => done(false));
  });
}
