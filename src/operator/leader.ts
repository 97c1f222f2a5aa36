/**
 * Leader election on a coordination.k8s.io/v1 Lease, the client-go algorithm: the holder renews every
 * `retryPeriod`; others take over only when the record has not changed for `leaseDuration` as measured by their
 * own clock (no clock-skew assumptions); a holder that cannot renew within `renewDeadline` stops leading at once.
 * Defaults 30/20/5 s (Flux-like) keep writes to one every 5 s. On a clean stop the lease is released.
 */
import { z } from 'zod';
import { AppError, ErrorCode } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { type KubeApi, type ResourceType, kubeStatusOf } from './kube.ts';
import { microTime, signalWithTimeout, sleepUnlessAborted } from './time.ts';

export const leaseType: ResourceType = { group: 'coordination.k8s.io', version: 'v1', plural: 'leases', kind: 'Lease' };

export interface LeaderElectionOptions {
  namespace: string;
  leaseName: string;
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
}

const leaseSchema = z.looseObject({
  metadata: z.looseObject({ resourceVersion: z.string() }),
  spec: z
    .looseObject({
      holderIdentity: z.string().nullish(),
      leaseDurationSeconds: z.number().nullish(),
      acquireTime: z.string().nullish(),
      renewTime: z.string().nullish(),
      leaseTransitions: z.number().nullish(),
    })
    .default({}),
});
type Lease = z.infer<typeof leaseSchema>;

export class LeaderElector {
  private readonly api: KubeApi;
  private readonly log: Logger;
  private readonly namespace: string;
  private readonly leaseName: string;
  readonly identity: string;
  private readonly leaseDurationMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly abort = new AbortController();
  private leading = false;
  /** Whether we know who leads (after the first attempt): part of readiness. */
  private decided = false;
  private observed: { record: string; at: number } | undefined;
  private running: Promise<void> | undefined;
  onStartedLeading: (() => void) | undefined;
  onStoppedLeading: (() => void) | undefined;

  constructor(api: KubeApi, options: LeaderElectionOptions, log: Logger) {
    this.api = api;
    this.namespace = options.namespace;
    this.leaseName = options.leaseName;
    this.identity = options.identity;
    this.leaseDurationMs = options.leaseDurationMs ?? 30_000;
    this.renewDeadlineMs = options.renewDeadlineMs ?? 20_000;
    this.retryPeriodMs = options.retryPeriodMs ?? 5_000;
    if (!(this.leaseDurationMs > this.renewDeadlineMs && this.renewDeadlineMs > this.retryPeriodMs)) {
      throw new AppError(ErrorCode.InvalidInput, 'leader election: lease duration > renew deadline > retry period is required', {
        hint: 'e.g. 30 s / 20 s / 5 s',
      });
    }
    this.log = log.child({ component: 'leader-election', lease: `${options.namespace}/${options.leaseName}`, identity: options.identity });
  }

  isLeader(): boolean {
    return this.leading;
  }

  isDecided(): boolean {
    return this.decided;
  }

  start(): void {
    this.running ??= this.run();
  }

  /** Stops campaigning; a leader releases the lease so a standby takes over without waiting for expiry. */
  async stop(): Promise<void> {
    this.abort.abort(new Error('leader election stopped'));
    await this.running;
    if (this.leading) {
      this.setLeading(false);
      await this.release();
    }
  }

  private setLeading(leading: boolean): void {
    if (leading === this.leading) return;
    this.leading = leading;
    this.log.info(leading ? 'became leader' : 'stopped leading');
    (leading ? this.onStartedLeading : this.onStoppedLeading)?.();
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    let lastRenew = 0;
    while (!signal.aborted) {
      let acquired = false;
      const attempt = signalWithTimeout(signal, this.retryPeriodMs * 2, 'lease update');
      try {
        acquired = await this.tryAcquireOrRenew(attempt.signal);
        // Leader or standby is known only once the Lease could be read.
        this.decided = true;
      } catch (err) {
        if (signal.aborted) break;
        this.log.warn({ err: err instanceof Error ? err.message : err }, 'lease update failed');
      } finally {
        attempt.dispose();
      }
      if (acquired) {
        lastRenew = Date.now();
        this.setLeading(true);
      } else if (this.leading && Date.now() - lastRenew > this.renewDeadlineMs) {
        this.setLeading(false);
      } else if (!acquired && this.leading && this.observed && !this.observed.record.startsWith(`${this.identity}\u0000`)) {
        // Someone else holds it: our lease was taken over.
        this.setLeading(false);
      }
      await sleepUnlessAborted(this.retryPeriodMs, signal);
    }
  }

  private async tryAcquireOrRenew(signal: AbortSignal): Promise<boolean> {
    const now = new Date();
    const raw = await this.api.getIfExists(leaseType, this.namespace, this.leaseName, signal);
    if (raw === undefined) {
      await this.api.create(leaseType, this.namespace, this.leaseBody(undefined, now), signal);
      this.observe(this.identity, microTime(now));
      return true;
    }
    const lease = leaseSchema.parse(raw);
    const holder = lease.spec.holderIdentity ?? '';
    this.observe(holder, lease.spec.renewTime ?? '');
    const observedAt = this.observed?.at ?? 0;
    const durationMs = (lease.spec.leaseDurationSeconds ?? this.leaseDurationMs / 1000) * 1000;
    if (holder !== '' && holder !== this.identity && observedAt + durationMs > Date.now()) return false;
    try {
      await this.api.replace(leaseType, this.namespace, this.leaseName, this.leaseBody(lease, now), signal);
    } catch (err) {
      if (kubeStatusOf(err) === 409) return false; // another candidate wrote first
      throw err;
    }
    this.observe(this.identity, microTime(now));
    return true;
  }

  private observe(holder: string, renewTime: string): void {
    const record = `${holder}\u0000${renewTime}`;
    if (this.observed?.record !== record) this.observed = { record, at: Date.now() };
  }

  private leaseBody(current: Lease | undefined, now: Date): unknown {
    const takingOver = current?.spec.holderIdentity !== this.identity;
    return {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name: this.leaseName, namespace: this.namespace, ...(current ? { resourceVersion: current.metadata.resourceVersion } : {}) },
      spec: {
        holderIdentity: this.identity,
        leaseDurationSeconds: Math.ceil(this.leaseDurationMs / 1000),
        acquireTime: takingOver ? microTime(now) : (current?.spec.acquireTime ?? microTime(now)),
        renewTime: microTime(now),
        leaseTransitions: (current?.spec.leaseTransitions ?? 0) + (current && takingOver ? 1 : 0),
      },
    };
  }

  private async release(): Promise<void> {
    const signal = AbortSignal.timeout(5000);
    try {
      const lease = leaseSchema.parse(await this.api.get(leaseType, this.namespace, this.leaseName, signal));
      if (lease.spec.holderIdentity !== this.identity) return;
      const now = microTime(new Date());
      await this.api.replace(
        leaseType,
        this.namespace,
        this.leaseName,
        {
          apiVersion: 'coordination.k8s.io/v1',
          kind: 'Lease',
          metadata: { name: this.leaseName, namespace: this.namespace, resourceVersion: lease.metadata.resourceVersion },
          spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: now },
        },
        signal,
      );
      this.log.info('released the lease');
    } catch (err) {
      this.log.warn({ err: err instanceof Error ? err.message : err }, 'could not release the lease; standbys take over when it expires');
    }
  }
}
