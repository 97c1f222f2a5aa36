/**
 * One Prism client per NutanixCluster, reused across reconciles (a new client per reconcile means a fresh
 * login each time, which overloaded Prism IAM for CAPX, operator-anchors §1.4). The entry is keyed by a SHA-256
 * of endpoint, credentials and CA: a rotated Secret changes the hash and the next reconcile gets a new client,
 * without a restart.
 */
import { createHash } from 'node:crypto';
import { createPrismClient, type PrismClientOptions } from '../prism/client.ts';
import type { PrismClient, PrismConnection } from '../prism/types.ts';

export type PrismClientFactory = (connection: PrismConnection, options: PrismClientOptions) => PrismClient;

export class PrismClientCache {
  private readonly entries = new Map<string, { hash: string; client: PrismClient }>();
  private readonly factory: PrismClientFactory;
  private readonly options: PrismClientOptions;

  constructor(options: PrismClientOptions = {}, factory: PrismClientFactory = createPrismClient) {
    this.options = options;
    this.factory = factory;
  }

  /** The client for `owner` (e.g. "namespace/cluster-name"), rebuilt when the connection changed. */
  get(owner: string, connection: PrismConnection): PrismClient {
    const hash = connectionHash(connection);
    const entry = this.entries.get(owner);
    if (entry?.hash === hash) return entry.client;
    if (entry) void entry.client.close();
    const client = this.factory(connection, this.options);
    this.entries.set(owner, { hash, client });
    return client;
  }

  /** Forgets and closes the client of a deleted NutanixCluster. */
  async delete(owner: string): Promise<void> {
    const entry = this.entries.get(owner);
    this.entries.delete(owner);
    await entry?.client.close();
  }

  async closeAll(): Promise<void> {
    const clients = [...this.entries.values()].map((e) => e.client);
    this.entries.clear();
    await Promise.all(clients.map((c) => c.close()));
  }

  get size(): number {
    return this.entries.size;
  }
}

export function connectionHash(connection: PrismConnection): string {
  const material = JSON.stringify([connection.endpoint, connection.username, connection.password, connection.caPem ?? '', connection.insecureSkipTlsVerify ?? false, connection.requestsPerSecond ?? 0]);
  return createHash('sha256').update(material).digest('hex');
}
