/**
 * The VMs of each NutanixCluster, shared by every policy that selects from it: one paged listVms per cluster per
 * TTL, never a GET per VM (issue 5: 2,000 VMs and 500 policies must not become 500 listings). Concurrent callers
 * share the listing in flight (single flight). An entry is keyed like the Prism client cache — by a hash of
 * endpoint, credentials and CA — so rotated credentials drop the old listing and the next caller lists anew.
 */
import { abortError } from '../lib/errors.ts';
import type { PrismClient, PrismConnection, Vm } from '../prism/types.ts';
import { connectionHash } from './prism-cache.ts';

export interface InventorySnapshot {
  vms: readonly Vm[];
  listedAt: Date;
}

export interface VmInventoryOptions {
  /** How long a listing is reused (default 60 s). */
  ttlMs?: number;
  /** Bound of one listing; it belongs to no single caller, so no caller's signal may abort it (default 2 min). */
  listTimeoutMs?: number;
  /** Clock, for tests of the TTL. */
  now?: () => number;
}

interface Entry {
  hash: string;
  snapshot?: InventorySnapshot;
  inFlight?: Promise<InventorySnapshot>;
}

export class VmInventory {
  private readonly entries = new Map<string, Entry>();
  private readonly ttlMs: number;
  private readonly listTimeoutMs: number;
  private readonly now: () => number;
  /** Listings started (successful or not); tests and metrics read it. */
  listings = 0;

  constructor(options: VmInventoryOptions = {}) {
    this.ttlMs = options.ttlMs ?? 60_000;
    this.listTimeoutMs = options.listTimeoutMs ?? 120_000;
    this.now = options.now ?? Date.now;
  }

  /**
   * The VMs of the cluster `owner` ("namespace/name"), listed through `client` (the cached client for
   * `connection`) unless a listing younger than the TTL exists for the same connection. `signal` only stops this
   * caller's wait; a failed listing is not cached, so the next caller tries again.
   */
  async vms(owner: string, connection: PrismConnection, client: PrismClient, signal: AbortSignal): Promise<InventorySnapshot> {
    const hash = connectionHash(connection);
    let entry = this.entries.get(owner);
    if (entry?.hash !== hash) {
      entry = { hash };
      this.entries.set(owner, entry);
    }
    if (entry.snapshot && this.now() - entry.snapshot.listedAt.getTime() < this.ttlMs) return entry.snapshot;
    entry.inFlight ??= this.list(owner, entry, client);
    return abortable(entry.inFlight, signal, `listing the VMs of ${owner}`);
  }

  /** Forgets a cluster (deleted, or its VMs are known to have changed). */
  invalidate(owner: string): void {
    this.entries.delete(owner);
  }

  private async list(owner: string, entry: Entry, client: PrismClient): Promise<InventorySnapshot> {
    this.listings++;
    try {
      const vms = await client.listVms({ signal: AbortSignal.timeout(this.listTimeoutMs) });
      const snapshot = { vms, listedAt: new Date(this.now()) };
      // A rotation while listing replaced the entry: the old credentials' answer is not kept.
      if (this.entries.get(owner) === entry) entry.snapshot = snapshot;
      return snapshot;
    } finally {
      entry.inFlight = undefined;
    }
  }
}

/** `promise`, or an Aborted error as soon as `signal` aborts (the promise itself keeps running for others). */
function abortable<T>(promise: Promise<T>, signal: AbortSignal, what: string): Promise<T> {
  if (signal.aborted) return Promise.reject(abortError(signal, what));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError(signal, what));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}
