/**
 * Kubernetes Events (events.k8s.io/v1) for milestones and failures, shown by `kubectl describe` and
 * `kubectl events`. client-node has no EventRecorder; this one aggregates like client-go's: a repeat of the same
 * (object, type, reason, note) patches the existing Event's series count instead of creating a new object.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../lib/log.ts';
import { type KubeApi, type KubeObject, PatchType, type ResourceType, kubeStatusOf } from './kube.ts';
import { microTime } from './time.ts';

export const eventType: ResourceType = { group: 'events.k8s.io', version: 'v1', plural: 'events', kind: 'Event' };

export const EventKind = { Normal: 'Normal', Warning: 'Warning' } as const;
export type EventKind = (typeof EventKind)[keyof typeof EventKind];

export interface EventInput {
  /** The object the event is about. */
  regarding: KubeObject & { apiVersion?: string; kind?: string };
  type: EventKind;
  /** CamelCase, e.g. CredentialsInvalid. */
  reason: string;
  /** What the controller did, e.g. Discover, Reconcile. */
  action: string;
  note: string;
}

interface SeriesEntry {
  name: string;
  namespace: string;
  count: number;
}

const maxTracked = 1000;

export class EventRecorder {
  private readonly api: KubeApi;
  private readonly controller: string;
  private readonly instance: string;
  private readonly log: Logger;
  private readonly series = new Map<string, SeriesEntry>();

  constructor(api: KubeApi, options: { controller: string; instance: string; log: Logger }) {
    this.api = api;
    this.controller = options.controller;
    this.instance = options.instance;
    this.log = options.log.child({ component: 'events' });
  }

  /** Records one event; failures are logged, never thrown (an event is not worth failing a reconcile). */
  async record(input: EventInput, signal: AbortSignal): Promise<void> {
    const meta = input.regarding.metadata;
    const namespace = meta.namespace ?? 'default';
    const key = [meta.uid ?? `${namespace}/${meta.name}`, input.type, input.reason, input.note].join('\u0000');
    const now = microTime(new Date());
    try {
      const existing = this.series.get(key);
      if (existing) {
        existing.count++;
        try {
          await this.api.patch(eventType, existing.namespace, existing.name, { series: { count: existing.count, lastObservedTime: now } }, { patchType: PatchType.Merge, signal });
          return;
        } catch (err) {
          if (kubeStatusOf(err) !== 404) throw err;
          this.series.delete(key); // expired by the apiserver's event TTL: start a new one
        }
      }
      const name = `${meta.name}.${randomBytes(8).toString('hex')}`;
      await this.api.create(
        eventType,
        namespace,
        {
          apiVersion: 'events.k8s.io/v1',
          kind: 'Event',
          metadata: { name, namespace },
          eventTime: now,
          reportingController: this.controller,
          reportingInstance: this.instance,
          action: input.action,
          reason: input.reason,
          type: input.type,
          note: input.note.slice(0, 1024),
          regarding: {
            apiVersion: input.regarding.apiVersion,
            kind: input.regarding.kind,
            name: meta.name,
            namespace,
            uid: meta.uid,
            resourceVersion: meta.resourceVersion,
          },
        },
        signal,
      );
      if (this.series.size >= maxTracked) this.series.delete(this.series.keys().next().value as string);
      this.series.set(key, { name, namespace, count: 1 });
    } catch (err) {
      this.log.warn({ err: err instanceof Error ? err.message : err, reason: input.reason, object: `${namespace}/${meta.name}` }, 'could not record event');
    }
  }
}
