/**
 * How a mover writes into its VMBackupRun: RFC 6902 JSON patches on the status subresource. Each disk Job only
 * touches `/status/disks/<i>/…`, guarded by a `test` of the disk's UUID, so concurrent disks never clobber each
 * other or the controller's fields. The kubeconfig is the in-cluster one (the mover ServiceAccount) or KUBECONFIG.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { KubeApi, PatchType, kubeStatusOf } from '../operator/kube.ts';
import { vmBackupRunType } from '../operator/resources.ts';
import type { RunRef } from './contract.ts';

export type JsonPatchOp = { op: 'add' | 'replace' | 'test'; path: string; value: unknown } | { op: 'remove'; path: string };

export interface RunStatusWriter {
  patchStatus(ops: JsonPatchOp[], signal: AbortSignal): Promise<void>;
}

/** The mover's view of a failed patch: what its ServiceAccount lacks, or that the plan and the status disagree. */
function statusError(err: unknown, run: RunRef): unknown {
  const where = `VMBackupRun ${run.namespace}/${run.name}`;
  const code = kubeStatusOf(err);
  if (code === 401 || code === 403) {
    return new AppError(ErrorCode.Forbidden, `patching the status of ${where} was refused (HTTP ${code})`, {
      cause: err,
      hint: 'the mover ServiceAccount needs get and patch on vmbackupruns/status in this namespace',
    });
  }
  if (code === 404) return new AppError(ErrorCode.NotFound, `${where} does not exist`, { cause: err, hint: 'the run was deleted; its Jobs go with it' });
  if (code === 422) {
    return new AppError(ErrorCode.Conflict, `${where}: status patch rejected: ${isAppError(err) ? err.message : String(err)}`, {
      cause: err,
      hint: "status.disks must list this disk at the request's statusIndex (the controller creates that list before the Jobs)",
    });
  }
  return err;
}

/** Patches the run's status through the Kubernetes API (KUBECONFIG when set, else the in-cluster ServiceAccount). */
export function kubeRunStatusWriter(run: RunRef, api: KubeApi = KubeApi.fromKubeconfig()): RunStatusWriter {
  return {
    async patchStatus(ops, signal) {
      try {
        await api.patch(vmBackupRunType, run.namespace, run.name, ops, { patchType: PatchType.Json, subresource: 'status', signal });
      } catch (err) {
        throw statusError(err, run);
      }
    },
  };
}

/** A patch that must land (final figures): retried with backoff while the failure is transient. */
export async function patchStatusReliably(writer: RunStatusWriter, ops: JsonPatchOp[], signal: AbortSignal, attempts = 5): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await writer.patchStatus(ops, signal);
      return;
    } catch (err) {
      if (!isAppError(err) || !err.retryable || attempt >= attempts || signal.aborted) throw err;
      await sleep(500 * 2 ** (attempt - 1), undefined, { signal });
    }
  }
}

export interface DiskFigures {
  sizeBytes?: number;
  changedBytes?: number;
  transferredBytes?: number;
  zeroBytes?: number;
  progressPercent?: number;
  throughputBytesPerSecond?: number;
}

/** JSON patch setting the given fields of `/status/disks/<index>` after checking it is the expected disk. */
export function diskStatusPatch(index: number, diskUuid: string, figures: DiskFigures): JsonPatchOp[] {
  const base = `/status/disks/${index}`;
  const ops: JsonPatchOp[] = [{ op: 'test', path: `${base}/diskUUID`, value: diskUuid }];
  for (const [key, value] of Object.entries(figures)) {
    if (value !== undefined) ops.push({ op: 'add', path: `${base}/${key}`, value: Math.max(0, Math.round(value)) });
  }
  return ops;
}

/** JSON patch recording why the export of the disk failed (at most 1 KiB), guarded like diskStatusPatch. */
export function diskFailurePatch(index: number, diskUuid: string, reason: string): JsonPatchOp[] {
  const base = `/status/disks/${index}`;
  return [
    { op: 'test', path: `${base}/diskUUID`, value: diskUuid },
    { op: 'add', path: `${base}/failureReason`, value: reason.slice(0, 1024) },
  ];
}

/**
 * Sends the latest progress every `intervalMs` while a disk copies, and at once when the phase changes (so the
 * status shows the copy's total as soon as the plan is known): never two patches at once, a failed progress
 * patch is logged and skipped (the copy matters more than the progress bar).
 */
export class ProgressReporter {
  readonly #writer: RunStatusWriter;
  readonly #index: number;
  readonly #diskUuid: string;
  readonly #log: Logger;
  readonly #signal: AbortSignal;
  #latest: DiskFigures | undefined;
  #phase: string | undefined;
  #sent: string | undefined;
  #timer: NodeJS.Timeout;
  #inFlight: Promise<void> = Promise.resolve();
  /** Number of progress patches the apiserver accepted. */
  sentCount = 0;

  constructor(writer: RunStatusWriter, statusIndex: number, diskUuid: string, intervalMs: number, log: Logger, signal: AbortSignal) {
    this.#writer = writer;
    this.#index = statusIndex;
    this.#diskUuid = diskUuid;
    this.#log = log;
    this.#signal = signal;
    this.#timer = setInterval(() => this.#tick(), intervalMs);
  }

  update(figures: DiskFigures, phase: string): void {
    this.#latest = figures;
    if (phase === this.#phase) return;
    this.#phase = phase;
    this.#tick();
  }

  #tick(): void {
    const figures = this.#latest;
    const key = JSON.stringify(figures);
    if (!figures || key === this.#sent) return;
    this.#inFlight = this.#inFlight.then(async () => {
      try {
        await this.#writer.patchStatus(diskStatusPatch(this.#index, this.#diskUuid, figures), this.#signal);
        this.#sent = key;
        this.sentCount++;
      } catch (err) {
        this.#log.warn({ err: err instanceof Error ? err.message : String(err) }, 'progress not reported');
      }
    });
  }

  /** Stops the timer and waits for a patch in flight, so the final patch lands after every progress patch. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#inFlight;
  }
}
