/**
 * An informer for one kind in one namespace: list, then watch from the list's resourceVersion, keeping a local
 * cache. What client-node's informer lacks is added here (operator-anchors §3, §2.16): 410 Gone → relist, any
 * other failure → reconnect with capped exponential backoff, a watchdog relist when nothing arrived for too
 * long (a silently dead watch), and a periodic resync that hands every cached object to the handlers again.
 */
import type { Logger } from '../lib/log.ts';
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import { type KubeApi, type KubeObject, type ResourceType, kubeObject, kubeStatusOf } from './kube.ts';
import { sleepUnlessAborted } from './time.ts';

export interface InformerOptions {
  /** Every object is handed to `onResync` this often (default 5 min). */
  resyncPeriodMs?: number;
  /** Relist when no event (bookmarks included) arrived for this long (default 10 min). */
  watchdogMs?: number;
  /** Reconnect backoff bounds (default 1 s → 30 s). */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

export type InformerEvent = 'add' | 'update' | 'delete' | 'resync';
/** `previous` is the cached object an update replaces. */
export type InformerHandler = (event: InformerEvent, object: KubeObject, previous?: KubeObject) => void;

export function objectKey(namespace: string | undefined, name: string): string {
  return namespace ? `${namespace}/${name}` : name;
}

export class Informer {
  readonly type: ResourceType;
  private readonly api: KubeApi;
  private readonly namespace: string;
  private readonly log: Logger;
  private readonly options: Required<InformerOptions>;
  private readonly cache = new Map<string, KubeObject>();
  private readonly handlers: InformerHandler[] = [];
  private readonly abort = new AbortController();
  private resourceVersion: string | undefined;
  private lastEventAt = Date.now();
  private synced = false;
  private syncedWaiters: (() => void)[] = [];
  private running: Promise<void> | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  /** Counts full lists (the first one included); tests and metrics read it. */
  lists = 0;

  constructor(api: KubeApi, type: ResourceType, namespace: string, log: Logger, options: InformerOptions = {}) {
    this.api = api;
    this.type = type;
    this.namespace = namespace;
    this.log = log.child({ informer: type.plural, namespace });
    this.options = {
      resyncPeriodMs: options.resyncPeriodMs ?? 300_000,
      watchdogMs: options.watchdogMs ?? 600_000,
      minBackoffMs: options.minBackoffMs ?? 1000,
      maxBackoffMs: options.maxBackoffMs ?? 30_000,
    };
  }

  on(handler: InformerHandler): void {
    this.handlers.push(handler);
  }

  get(namespace: string, name: string): KubeObject | undefined {
    return this.cache.get(objectKey(namespace, name));
  }

  list(): KubeObject[] {
    return [...this.cache.values()];
  }

  /** False when neither a list nor a watch event succeeded for two watchdog periods: the liveness probe fails. */
  isHealthy(): boolean {
    return Date.now() - this.lastEventAt < 2 * this.options.watchdogMs;
  }

  hasSynced(): boolean {
    return this.synced;
  }

  /** Resolves after the first complete list. */
  waitForSync(): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise((resolve) => this.syncedWaiters.push(resolve));
  }

  start(): void {
    if (this.running) return;
    this.running = this.run();
    this.resyncTimer = setInterval(() => {
      for (const object of this.cache.values()) this.emit('resync', object);
    }, this.options.resyncPeriodMs);
    this.resyncTimer.unref();
  }

  async stop(): Promise<void> {
    this.abort.abort(new Error('informer stopped'));
    clearInterval(this.resyncTimer);
    await this.running;
  }

  private emit(event: InformerEvent, object: KubeObject, previous?: KubeObject): void {
    for (const handler of this.handlers) {
      try {
        handler(event, object, previous);
      } catch (err) {
        this.log.error({ err, event }, 'informer handler failed');
      }
    }
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    let backoff = this.options.minBackoffMs;
    while (!signal.aborted) {
      try {
        if (this.resourceVersion === undefined) await this.relist(signal);
        await this.watchOnce(signal);
        backoff = this.options.minBackoffMs;
      } catch (err) {
        if (signal.aborted) break;
        if (kubeStatusOf(err) === 410) {
          this.log.info('watch resourceVersion expired (410 Gone); relisting');
          this.resourceVersion = undefined;
          continue;
        }
        this.log.warn({ err: isAppError(err) ? err.message : err, retryInMs: backoff }, 'list/watch failed; retrying');
        await sleepUnlessAborted(backoff, signal);
        backoff = Math.min(this.options.maxBackoffMs, backoff * 2);
      }
    }
  }

  private async relist(signal: AbortSignal): Promise<void> {
    const { resourceVersion, items } = await this.api.list(this.type, this.namespace, signal);
    this.lists++;
    const seen = new Set<string>();
    for (const item of items) {
      const key = objectKey(item.metadata.namespace, item.metadata.name);
      seen.add(key);
      this.upsert(key, item);
    }
    // Objects deleted while we were not watching.
    for (const [key, object] of this.cache) {
      if (!seen.has(key)) {
        this.cache.delete(key);
        this.emit('delete', object);
      }
    }
    this.resourceVersion = resourceVersion;
    this.lastEventAt = Date.now();
    if (!this.synced) {
      this.synced = true;
      for (const resolve of this.syncedWaiters.splice(0)) resolve();
    }
  }

  private upsert(key: string, object: KubeObject): void {
    // managedFields (server-side apply bookkeeping) is often the largest part of an object and no controller reads
    // it: cached copies drop it, as controller-runtime users do with a cache transform.
    delete object.metadata.managedFields;
    const previous = this.cache.get(key);
    this.cache.set(key, object);
    if (!previous) this.emit('add', object);
    else if (previous.metadata.resourceVersion !== object.metadata.resourceVersion) this.emit('update', object, previous);
  }

  /** One watch connection; the watchdog aborts it and forces a relist when it has gone quiet. */
  private async watchOnce(signal: AbortSignal): Promise<void> {
    const watchAbort = new AbortController();
    const onStop = (): void => watchAbort.abort(signal.reason);
    signal.addEventListener('abort', onStop, { once: true });
    let quiet = false;
    const watchdog = setInterval(() => {
      if (Date.now() - this.lastEventAt > this.options.watchdogMs) {
        quiet = true;
        watchAbort.abort(new Error('watch quiet for too long'));
      }
    }, Math.min(this.options.watchdogMs, 30_000));
    watchdog.unref();
    const startedAt = Date.now();
    let events = 0;
    try {
      await this.api.watch(
        this.type,
        this.namespace,
        this.resourceVersion ?? '',
        (eventType, raw) => {
          events++;
          this.onWatchEvent(eventType, raw);
        },
        watchAbort.signal,
      );
      // A watch the server closes at once, empty, would otherwise be reopened in a tight loop (client-go's
      // reflector calls this a "very short watch" and backs off the same way).
      if (events === 0 && Date.now() - startedAt < 1000) {
        throw new AppError(ErrorCode.Unavailable, `watch of ${this.type.plural} closed after ${Date.now() - startedAt} ms without events`, { retryable: true });
      }
    } catch (err) {
      if (!quiet || signal.aborted) throw err;
      this.log.warn({ quietForMs: Date.now() - this.lastEventAt }, 'watch quiet for too long; relisting');
      this.resourceVersion = undefined;
    } finally {
      clearInterval(watchdog);
      signal.removeEventListener('abort', onStop);
    }
  }

  private onWatchEvent(eventType: string, raw: unknown): void {
    this.lastEventAt = Date.now();
    const parsed = kubeObject.safeParse(raw);
    if (!parsed.success) {
      this.log.warn({ eventType }, 'ignoring a watch event without object metadata');
      return;
    }
    const object = parsed.data;
    if (object.metadata.resourceVersion) this.resourceVersion = object.metadata.resourceVersion;
    if (eventType === 'BOOKMARK') return;
    const key = objectKey(object.metadata.namespace, object.metadata.name);
    if (eventType === 'DELETED') {
      this.cache.delete(key);
      this.emit('delete', object);
    } else {
      this.upsert(key, object);
    }
  }
}
