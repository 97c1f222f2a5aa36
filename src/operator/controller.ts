/**
 * What a controller is to the runtime: the kind it reconciles, the kinds whose changes should reconcile it
 * again, and a level-triggered `reconcile` that reads the world, moves it one step and says when to look again.
 * The runner feeds keys from informers through a rate-limited WorkQueue into a few workers.
 */
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { setCondition } from './conditions.ts';
import { EventKind, type EventRecorder } from './events.ts';
import { objectKey, type Informer } from './informer.ts';
import { type KubeApi, type KubeObject, type ResourceType, apiVersionOf } from './kube.ts';
import { patchStatus } from './status.ts';
import { signalWithTimeout } from './time.ts';
import type { OperatorMetrics } from './metrics.ts';
import type { PrismClientCache } from './prism-cache.ts';
import { WorkQueue } from './workqueue.ts';
import { z } from 'zod';
import { condition } from '../crds/common.ts';

export interface ReconcileRequest {
  namespace: string;
  name: string;
}

export interface ReconcileResult {
  /** Reconcile this object again after this long (also after a success). */
  requeueAfterMs?: number;
}

/** What a reconcile gets besides its request. */
export interface ReconcileContext {
  /** Aborts when leadership is lost, the manager stops or the reconcile timeout passes. */
  signal: AbortSignal;
  log: Logger;
  api: KubeApi;
  events: EventRecorder;
  metrics: OperatorMetrics;
  prismClients: PrismClientCache;
  /** The shared informer cache of a kind the controller declared (for, owns or watches). */
  cache(type: ResourceType): Informer;
}

/** Secondary watch: a change to an object of `type` reconciles the primaries `map` names. */
export interface SecondaryWatch {
  type: ResourceType;
  /** Keys ("namespace/name") of primary objects to reconcile; `cache` reads the primary kind. */
  map(object: KubeObject, primaries: Informer): string[];
}

export interface ControllerDefinition {
  /** Short lower-case name, used in logs and the `controller` metric label. */
  name: string;
  /** The kind reconciled; its add/delete/resync and spec changes (metadata.generation) enqueue it. */
  for: ResourceType;
  /** Kinds this controller creates with a controller ownerReference to the primary (e.g. Jobs → VMBackupRun). */
  owns?: ResourceType[];
  watches?: SecondaryWatch[];
  /** Parallel workers (default 2); one key is never reconciled by two workers at once. */
  workers?: number;
  /** Per-reconcile timeout (default 5 min). */
  timeoutMs?: number;
  reconcile(request: ReconcileRequest, context: ReconcileContext): Promise<ReconcileResult | void>;
}

export interface RunnerOptions {
  baseBackoffMs?: number;
  maxBackoffMs?: number;
  /** After a non-retryable failure the object is looked at again this late (default 10 min), not in a hot loop. */
  terminalRequeueMs?: number;
}

const statusConditions = z.looseObject({ status: z.looseObject({ conditions: z.array(condition).optional() }).optional() });

/** One leadership term of one controller: a fresh queue and its workers, stopped when the term ends. */
export class ControllerRunner {
  readonly definition: ControllerDefinition;
  private readonly queue: WorkQueue;
  private readonly abort = new AbortController();
  private readonly workers: Promise<void>[] = [];
  private readonly context: Omit<ReconcileContext, 'signal' | 'log'>;
  private readonly log: Logger;
  private readonly terminalRequeueMs: number;

  constructor(definition: ControllerDefinition, context: Omit<ReconcileContext, 'signal' | 'log'>, log: Logger, options: RunnerOptions = {}) {
    this.definition = definition;
    this.context = context;
    this.log = log.child({ controller: definition.name });
    this.terminalRequeueMs = options.terminalRequeueMs ?? 600_000;
    this.queue = new WorkQueue({ baseDelayMs: options.baseBackoffMs, maxDelayMs: options.maxBackoffMs });
    const depth = context.metrics.workqueueDepth.labels(definition.name);
    depth.set(0);
    this.queue.onDepthChange = (n) => depth.set(n);
  }

  enqueue(key: string): void {
    this.queue.add(key);
  }

  start(): void {
    for (let i = 0; i < (this.definition.workers ?? 2); i++) this.workers.push(this.work());
  }

  async stop(): Promise<void> {
    this.abort.abort(new Error('controller stopped'));
    this.queue.shutDown();
    await Promise.all(this.workers);
  }

  private async work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      try {
        await this.reconcileKey(key);
      } finally {
        this.queue.done(key);
      }
    }
  }

  private async reconcileKey(key: string): Promise<void> {
    const { name: controller } = this.definition;
    const [namespace = '', name = ''] = key.split('/');
    const log = this.log.child({ object: key });
    const timeout = signalWithTimeout(this.abort.signal, this.definition.timeoutMs ?? 300_000, `reconcile of ${key}`);
    const signal = timeout.signal;
    const metrics = this.context.metrics;
    metrics.workqueueAdds.labels(controller).inc();
    const end = metrics.reconcileTime.labels(controller).startTimer();
    try {
      const result = await this.definition.reconcile({ namespace, name }, { ...this.context, signal, log });
      this.queue.forget(key);
      if (result?.requeueAfterMs !== undefined) {
        this.queue.addAfter(key, result.requeueAfterMs);
        metrics.reconcileTotal.labels(controller, 'requeue_after').inc();
      } else {
        metrics.reconcileTotal.labels(controller, 'success').inc();
      }
    } catch (err) {
      if (this.abort.signal.aborted) return; // leadership lost or stopping: the next leader reconciles it
      metrics.reconcileTotal.labels(controller, 'error').inc();
      metrics.reconcileErrors.labels(controller).inc();
      const appErr = isAppError(err) ? err : new AppError(ErrorCode.Internal, `reconcile failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      if (appErr.retryable) {
        const delay = this.queue.addRateLimited(key, appErr.retryAfterMs);
        metrics.workqueueRetries.labels(controller).inc();
        log.warn({ code: appErr.code, err: appErr.message, retryInMs: delay }, 'reconcile failed; retrying with backoff');
      } else {
        log.error({ code: appErr.code, err: appErr.message, hint: appErr.hint }, 'reconcile failed; not retrying until the object or its inputs change');
        this.queue.forget(key);
        this.queue.addAfter(key, this.terminalRequeueMs);
        await this.reportTerminal(namespace, name, appErr);
      }
    } finally {
      timeout.dispose();
      end();
    }
  }

  /** A non-retryable failure becomes Ready=False (reason from the error code) and a Warning event. */
  private async reportTerminal(namespace: string, name: string, err: AppError): Promise<void> {
    const type = this.definition.for;
    const object = this.context.cache(type).get(namespace, name);
    if (!object) return;
    const timeout = signalWithTimeout(this.abort.signal, 10_000, 'failure report');
    const signal = timeout.signal;
    const reason = reasonFromCode(err.code);
    const message = err.oneLine();
    try {
      const current = statusConditions.parse(object).status?.conditions;
      const conditions = setCondition(current, { type: 'Ready', status: 'False', reason, message }, object.metadata.generation, new Date());
      await patchStatus(this.context.api, type, object, { conditions }, signal);
    } catch (patchErr) {
      this.log.warn({ err: patchErr instanceof Error ? patchErr.message : patchErr, object: objectKey(namespace, name) }, 'could not record the failure in status');
    }
    await this.context.events.record({ regarding: { ...object, apiVersion: apiVersionOf(type), kind: type.kind }, type: EventKind.Warning, reason, action: 'Reconcile', note: message }, signal);
    timeout.dispose();
  }
}

/** UNAUTHENTICATED → Unauthenticated, TLS_UNTRUSTED → TlsUntrusted: condition reasons are CamelCase. */
export function reasonFromCode(code: ErrorCode): string {
  return code
    .toLowerCase()
    .split('_')
    .map((part) => part.charAt(0).toUpperCase() + part.slice(1))
    .join('');
}
