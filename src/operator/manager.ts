/**
 * The Manager wires the runtime together: one shared informer per kind, one ControllerRunner per controller
 * (created afresh for each leadership term, so reconciles stop the moment the lease is lost), leader election,
 * Events, metrics and the /metrics /healthz /readyz endpoints. Controllers plug in with `addController`.
 */
import type { Logger } from '../lib/log.ts';
import { ControllerRunner, type ControllerDefinition, type RunnerOptions } from './controller.ts';
import { EventRecorder } from './events.ts';
import { Informer, objectKey, type InformerOptions } from './informer.ts';
import type { KubeApi, KubeObject, ResourceType } from './kube.ts';
import { LeaderElector, type LeaderElectionOptions } from './leader.ts';
import { createOperatorMetrics, type OperatorMetrics } from './metrics.ts';
import { PrismClientCache } from './prism-cache.ts';
import { startHttpServer, type ProbeResult, type RunningServer } from './server.ts';

export interface ManagerOptions {
  api: KubeApi;
  /** The one namespace watched: CRs, Secrets, PVCs and Jobs all live there. */
  namespace: string;
  log: Logger;
  /** Name in Events' reportingController and the lease (default sendense-nutanix-operator). */
  name?: string;
  /** This replica's identity (lease holder, Events' reportingInstance); usually the pod name. */
  identity: string;
  /** Lease timing; false runs without election (a single replica, or tests). */
  leaderElection?: Pick<LeaderElectionOptions, 'leaseDurationMs' | 'renewDeadlineMs' | 'retryPeriodMs'> | false;
  informers?: InformerOptions;
  runner?: RunnerOptions;
  /** Ports of the metrics and probe servers; the same port serves both; undefined = not served. */
  metricsPort?: number;
  healthPort?: number;
  bindAddress?: string;
  prismClients?: PrismClientCache;
}

export class Manager {
  readonly api: KubeApi;
  readonly namespace: string;
  readonly metrics: OperatorMetrics;
  readonly events: EventRecorder;
  readonly prismClients: PrismClientCache;
  readonly elector: LeaderElector | undefined;
  private readonly log: Logger;
  private readonly options: ManagerOptions;
  private readonly informers = new Map<string, Informer>();
  private readonly controllers: ControllerDefinition[] = [];
  private runners: ControllerRunner[] = [];
  private servers: RunningServer[] = [];
  private started = false;
  private leading = false;
  private termChange: Promise<void> = Promise.resolve();

  constructor(options: ManagerOptions) {
    this.options = options;
    this.api = options.api;
    this.namespace = options.namespace;
    this.log = options.log;
    this.metrics = createOperatorMetrics();
    const name = options.name ?? 'sendense-nutanix-operator';
    this.events = new EventRecorder(options.api, { controller: `backup.sendense.io/${name}`, instance: options.identity, log: options.log });
    this.prismClients = options.prismClients ?? new PrismClientCache({ logger: options.log.child({ component: 'prism' }) });
    if (options.leaderElection !== false) {
      this.elector = new LeaderElector(options.api, { namespace: options.namespace, leaseName: name, identity: options.identity, ...options.leaderElection }, options.log);
      this.elector.onStartedLeading = () => this.changeTerm(true);
      this.elector.onStoppedLeading = () => this.changeTerm(false);
    }
  }

  /** The shared informer of a kind in the watched namespace (created on first use). */
  informer(type: ResourceType): Informer {
    const id = `${type.group}/${type.plural}`;
    let informer = this.informers.get(id);
    if (!informer) {
      informer = new Informer(this.api, type, this.namespace, this.log, this.options.informers);
      this.informers.set(id, informer);
      if (this.started) informer.start();
    }
    return informer;
  }

  /** Registers a controller; call before start(). */
  addController(definition: ControllerDefinition): void {
    if (this.started) throw new Error('addController must be called before start()');
    this.controllers.push(definition);
    const primaries = this.informer(definition.for);
    const enqueue = (key: string): void => this.runnerFor(definition)?.enqueue(key);
    primaries.on((event, object, previous) => {
      // Status writes bump resourceVersion but not generation: reconciling on them would loop.
      if (event === 'update' && previous && !specChanged(previous, object)) return;
      enqueue(objectKey(object.metadata.namespace, object.metadata.name));
    });
    for (const owned of definition.owns ?? []) {
      this.informer(owned).on((_event, object) => {
        const owner = object.metadata.ownerReferences?.find((ref) => ref.controller === true && ref.kind === definition.for.kind);
        if (owner) enqueue(objectKey(object.metadata.namespace, owner.name));
      });
    }
    for (const watch of definition.watches ?? []) {
      this.informer(watch.type).on((event, object) => {
        if (event === 'resync') return; // the primaries resync themselves
        for (const key of watch.map(object, primaries)) enqueue(key);
      });
    }
  }

  private runnerFor(definition: ControllerDefinition): ControllerRunner | undefined {
    return this.runners.find((r) => r.definition === definition);
  }

  async start(): Promise<void> {
    this.started = true;
    for (const informer of this.informers.values()) informer.start();
    const { metricsPort, healthPort, bindAddress = '0.0.0.0' } = this.options;
    const probes = { healthz: () => this.healthz(), readyz: () => this.readyz() };
    if (metricsPort !== undefined && metricsPort === healthPort) {
      this.servers.push(await startHttpServer(bindAddress, metricsPort, { metrics: this.metrics.registry, ...probes }));
    } else {
      if (metricsPort !== undefined) this.servers.push(await startHttpServer(bindAddress, metricsPort, { metrics: this.metrics.registry }));
      if (healthPort !== undefined) this.servers.push(await startHttpServer(bindAddress, healthPort, probes));
    }
    await Promise.all([...this.informers.values()].map((i) => i.waitForSync()));
    if (this.elector) this.elector.start();
    else this.changeTerm(true);
  }

  /** Ports actually bound (useful with port 0). */
  get ports(): number[] {
    return this.servers.map((s) => s.port);
  }

  isLeader(): boolean {
    return this.leading;
  }

  async stop(): Promise<void> {
    await this.elector?.stop();
    this.changeTerm(false);
    await this.termChange;
    await Promise.all([...this.informers.values()].map((i) => i.stop()));
    await Promise.all(this.servers.map((s) => s.close()));
    this.servers = [];
    await this.prismClients.closeAll();
  }

  /** Starts or ends a leadership term; serialized so a quick lose-then-win never overlaps two sets of workers. */
  private changeTerm(leading: boolean): void {
    this.termChange = this.termChange.then(async () => {
      if (leading === this.leading) return;
      this.leading = leading;
      this.metrics.leaderElectionMaster.labels(this.options.name ?? 'sendense-nutanix-operator').set(leading ? 1 : 0);
      if (!leading) {
        const runners = this.runners;
        this.runners = [];
        await Promise.all(runners.map((r) => r.stop()));
        return;
      }
      const context = {
        api: this.api,
        events: this.events,
        metrics: this.metrics,
        prismClients: this.prismClients,
        cache: (type: ResourceType) => this.informer(type),
      };
      this.runners = this.controllers.map((definition) => new ControllerRunner(definition, context, this.log, this.options.runner));
      for (const runner of this.runners) {
        for (const object of this.informer(runner.definition.for).list()) runner.enqueue(objectKey(object.metadata.namespace, object.metadata.name));
        runner.start();
      }
    });
  }

  private healthz(): ProbeResult {
    const details = [...this.informers.values()].map((i) => `informer ${i.type.plural}: ${i.isHealthy() ? 'ok' : 'watch silent too long'}`);
    return { ok: [...this.informers.values()].every((i) => i.isHealthy()), details };
  }

  private readyz(): ProbeResult {
    const informers = [...this.informers.values()];
    const details = informers.map((i) => `informer ${i.type.plural}: ${i.hasSynced() ? 'synced' : 'not synced'}`);
    const decided = this.elector ? this.elector.isDecided() : true;
    details.push(`leader election: ${decided ? (this.leading ? 'leader' : 'standby') : 'unknown'}`);
    return { ok: informers.every((i) => i.hasSynced()) && decided, details };
  }
}

/** metadata.generation moves only on spec changes; deletion and finalizer/label edits matter too. */
function specChanged(previous: KubeObject, object: KubeObject): boolean {
  const meta = object.metadata;
  const before = previous.metadata;
  return (
    meta.generation === undefined ||
    meta.generation !== before.generation ||
    meta.deletionTimestamp !== before.deletionTimestamp ||
    JSON.stringify(meta.finalizers) !== JSON.stringify(before.finalizers) ||
    JSON.stringify(meta.labels) !== JSON.stringify(before.labels) ||
    JSON.stringify(meta.annotations) !== JSON.stringify(before.annotations)
  );
}
