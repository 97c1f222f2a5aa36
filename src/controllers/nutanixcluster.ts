/**
 * NutanixCluster controller: resolves the credentials (and CA) Secrets, talks to Prism Central through a cached
 * client, and publishes what it found — versions, API generations, clusters, VM count — with the conditions
 * Ready, CredentialsValid and Reachable whose reasons name the problem and whose messages name the fix.
 * Discovery repeats every `discoveryIntervalMs`; a changed Secret reconciles the clusters that reference it, and
 * the client cache is keyed by a hash of the credentials, so a rotated password takes effect without a restart.
 */
import { z } from 'zod';
import type { Condition } from '../crds/common.ts';
import { nutanixCluster, type NutanixCluster, type NutanixClusterStatus } from '../crds/nutanix-cluster.ts';
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import { findCondition, setCondition, type ConditionInput } from '../operator/conditions.ts';
import type { ControllerDefinition, ReconcileContext, ReconcileRequest, ReconcileResult } from '../operator/controller.ts';
import { EventKind } from '../operator/events.ts';
import { objectKey, type Informer } from '../operator/informer.ts';
import type { KubeObject } from '../operator/kube.ts';
import { nutanixClusterType, secretType } from '../operator/resources.ts';
import { patchStatus } from '../operator/status.ts';
import { rfc3339 } from '../operator/time.ts';
import type { PrismConnection } from '../prism/types.ts';

export const ConditionType = { Ready: 'Ready', CredentialsValid: 'CredentialsValid', Reachable: 'Reachable' } as const;

export const Reason = {
  Discovered: 'Discovered',
  Authenticated: 'Authenticated',
  Connected: 'Connected',
  NotChecked: 'NotChecked',
  SecretNotFound: 'SecretNotFound',
  SecretKeyMissing: 'SecretKeyMissing',
  CaSecretNotFound: 'CaSecretNotFound',
  CaKeyMissing: 'CaKeyMissing',
  Unauthenticated: 'Unauthenticated',
  Forbidden: 'Forbidden',
  TlsUntrusted: 'TlsUntrusted',
  Unreachable: 'Unreachable',
  Unavailable: 'Unavailable',
  DiscoveryFailed: 'DiscoveryFailed',
} as const;

export interface NutanixClusterControllerOptions {
  /** How often Prism is asked again while nothing changes (default 5 min). */
  discoveryIntervalMs?: number;
}

const secretSchema = z.looseObject({ data: z.record(z.string(), z.string()).optional() });

/** The three conditions after one reconcile; Ready is derived from the other two. */
interface Verdict {
  credentials: Omit<ConditionInput, 'type'>;
  reachable: Omit<ConditionInput, 'type'>;
  ready: Omit<ConditionInput, 'type'>;
}

export function nutanixClusterController(options: NutanixClusterControllerOptions = {}): ControllerDefinition {
  const intervalMs = options.discoveryIntervalMs ?? 300_000;
  return {
    name: 'nutanixcluster',
    for: nutanixClusterType,
    watches: [{ type: secretType, map: clustersReferencingSecret }],
    reconcile: (request, context) => reconcileCluster(request, context, intervalMs),
  };
}

/** Keys of the NutanixClusters whose credentials or CA live in `secret`. */
function clustersReferencingSecret(secret: KubeObject, clusters: Informer): string[] {
  const keys: string[] = [];
  for (const raw of clusters.list()) {
    const parsed = nutanixCluster.safeParse(raw);
    if (!parsed.success || raw.metadata.namespace !== secret.metadata.namespace) continue;
    const spec = parsed.data.spec;
    if (spec.credentialsSecretRef.name === secret.metadata.name || spec.caSecretRef?.name === secret.metadata.name) {
      keys.push(objectKey(raw.metadata.namespace, raw.metadata.name));
    }
  }
  return keys;
}

async function reconcileCluster(request: ReconcileRequest, context: ReconcileContext, intervalMs: number): Promise<ReconcileResult> {
  const key = objectKey(request.namespace, request.name);
  const raw = context.cache(nutanixClusterType).get(request.namespace, request.name);
  if (!raw) {
    await context.prismClients.delete(key);
    context.metrics.clusterVms.remove(key);
    return {};
  }
  if (raw.metadata.deletionTimestamp) return {};
  const parsed = nutanixCluster.safeParse(raw);
  if (!parsed.success) {
    throw new AppError(ErrorCode.InvalidInput, `NutanixCluster ${key} does not match the schema: ${z.prettifyError(parsed.error)}`, {
      hint: 'fix the fields named above (kubectl edit ntnx)',
    });
  }
  const cluster = parsed.data;
  const secrets = context.cache(secretType);

  const resolved = resolveConnection(cluster, secrets);
  if ('verdict' in resolved) {
    await publish(context, raw, cluster, resolved.verdict, {});
    return { requeueAfterMs: intervalMs };
  }

  const client = context.prismClients.get(key, resolved.connection);
  try {
    const capabilities = await client.capabilities(context.signal);
    const vms = await client.listVms({ signal: context.signal });
    const clusters = capabilities.clusters.filter((c) => !c.isPrismCentral);
    const found: NutanixClusterStatus = {
      ...(capabilities.pcVersion ? { prismCentralVersion: capabilities.pcVersion } : {}),
      apiGenerations: capabilities.apiGenerations,
      changedRegionsSupported: capabilities.changedRegionTracking,
      clusters: clusters.map((c) => ({ name: c.name, uuid: c.uuid, ...(c.version ? { aosVersion: c.version } : {}) })),
      vmCount: vms.length,
      lastDiscoveryTime: rfc3339(new Date()),
    };
    context.metrics.clusterVms.labels(key).set(vms.length);
    const version = capabilities.pcVersion ? `Prism Central ${capabilities.pcVersion}` : 'Prism';
    await publish(context, raw, cluster, {
      credentials: { status: 'True', reason: Reason.Authenticated, message: `${resolved.connection.username} is accepted by Prism` },
      reachable: { status: 'True', reason: Reason.Connected, message: `${version} answers at ${cluster.spec.endpoint} (${capabilities.apiGenerations.join(', ')})` },
      ready: { status: 'True', reason: Reason.Discovered, message: `${vms.length} VMs on ${clusters.length} cluster(s)` },
    }, found);
    return { requeueAfterMs: intervalMs };
  } catch (err) {
    if (context.signal.aborted) throw err;
    const { verdict, transient } = verdictFromPrismError(err, cluster);
    await publish(context, raw, cluster, verdict, {});
    // Outages are retried with backoff; configuration problems wait for a change (Secret or spec) or the next interval.
    if (transient) throw new AppError(isAppError(err) ? err.code : ErrorCode.Unavailable, verdict.ready.message, { retryable: true, cause: err });
    return { requeueAfterMs: intervalMs };
  }
}

export type Resolution = { connection: PrismConnection } | { verdict: Verdict };

/** The Prism connection of a NutanixCluster from its Secrets, or why it cannot be built (also used by the run controller). */
export function resolveConnection(cluster: NutanixCluster, secrets: Informer): Resolution {
  const namespace = cluster.metadata.namespace ?? '';
  const ref = cluster.spec.credentialsSecretRef;
  const notChecked = { status: 'Unknown', reason: Reason.NotChecked, message: 'not checked until the credentials can be read' } as const;
  const credentialsProblem = (reason: string, message: string): Resolution => ({
    verdict: { credentials: { status: 'False', reason, message }, reachable: notChecked, ready: { status: 'False', reason, message } },
  });
  const data = secretData(secrets.get(namespace, ref.name));
  if (!data) {
    return credentialsProblem(Reason.SecretNotFound, `Secret ${namespace}/${ref.name} (spec.credentialsSecretRef.name) does not exist; create it with keys ${ref.usernameKey} and ${ref.passwordKey}`);
  }
  const missing = [ref.usernameKey, ref.passwordKey].filter((k) => !data.get(k));
  if (missing.length > 0) {
    return credentialsProblem(
      Reason.SecretKeyMissing,
      `Secret ${namespace}/${ref.name} has no ${missing.join(' or ')} key; add it, or set spec.credentialsSecretRef.${missing[0] === ref.usernameKey ? 'usernameKey' : 'passwordKey'} to the key that holds it`,
    );
  }
  const connection: PrismConnection = {
    endpoint: cluster.spec.endpoint,
    username: data.get(ref.usernameKey) ?? '',
    password: data.get(ref.passwordKey) ?? '',
    insecureSkipTlsVerify: cluster.spec.insecureSkipTLSVerify,
    requestsPerSecond: cluster.spec.concurrency.prismRequestsPerSecond,
  };
  const caRef = cluster.spec.caSecretRef;
  if (caRef) {
    const caData = secretData(secrets.get(namespace, caRef.name));
    const caPem = caData?.get(caRef.key);
    if (!caPem) {
      const [reason, message] = caData
        ? [Reason.CaKeyMissing, `Secret ${namespace}/${caRef.name} has no ${caRef.key} key; add the PEM bundle there or set spec.caSecretRef.key`]
        : [Reason.CaSecretNotFound, `Secret ${namespace}/${caRef.name} (spec.caSecretRef.name) does not exist; create it with the PEM bundle under ${caRef.key}`];
      return {
        verdict: {
          credentials: { status: 'Unknown', reason: Reason.NotChecked, message: 'not checked until Prism can be reached' },
          reachable: { status: 'False', reason, message },
          ready: { status: 'False', reason, message },
        },
      };
    }
    connection.caPem = caPem;
  }
  return { connection };
}

/** The Secret's keys, base64-decoded; undefined when the Secret is not in the cache. */
function secretData(raw: KubeObject | undefined): Map<string, string> | undefined {
  if (!raw) return undefined;
  const secret = secretSchema.parse(raw);
  return new Map(Object.entries(secret.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
}

function verdictFromPrismError(err: unknown, cluster: NutanixCluster): { verdict: Verdict; transient: boolean } {
  const appErr = isAppError(err) ? err : undefined;
  const detail = appErr?.message ?? (err instanceof Error ? err.message : String(err));
  const endpoint = cluster.spec.endpoint;
  const secret = cluster.spec.credentialsSecretRef.name;
  const notChecked = { status: 'Unknown', reason: Reason.NotChecked, message: 'not checked until Prism can be reached' } as const;
  const reached = { status: 'True', reason: Reason.Connected, message: `Prism answers at ${endpoint}` } as const;
  const unreachable = (reason: string, message: string, transient: boolean) => ({
    verdict: { credentials: notChecked, reachable: { status: 'False', reason, message }, ready: { status: 'False', reason, message } } satisfies Verdict,
    transient,
  });
  const rejected = (reason: string, message: string) => ({
    verdict: { credentials: { status: 'False', reason, message }, reachable: reached, ready: { status: 'False', reason, message } } satisfies Verdict,
    transient: false,
  });
  switch (appErr?.code) {
    case ErrorCode.Unauthenticated:
      return rejected(Reason.Unauthenticated, `Prism rejected the user name or password from Secret ${secret}; put the current password in the Secret (it is picked up without a restart)`);
    case ErrorCode.Forbidden:
      return rejected(Reason.Forbidden, `${detail}; give the Prism user a role that may list clusters and VMs and manage recovery points`);
    case ErrorCode.TlsUntrusted:
      return unreachable(Reason.TlsUntrusted, `${detail}; put the CA bundle that signed Prism’s certificate in a Secret and set spec.caSecretRef (or spec.insecureSkipTLSVerify for a lab)`, false);
    case ErrorCode.Unreachable:
    case ErrorCode.Timeout:
      return unreachable(Reason.Unreachable, `${detail}; check spec.endpoint (${endpoint}), DNS and network policies between the operator and Prism`, true);
    case ErrorCode.Unavailable:
    case ErrorCode.RateLimited:
      return unreachable(Reason.Unavailable, `${detail}; retrying with backoff`, true);
    default:
      return {
        verdict: { credentials: notChecked, reachable: reached, ready: { status: 'False', reason: Reason.DiscoveryFailed, message: `${detail}${appErr?.hint ? ` (${appErr.hint})` : ''}` } },
        transient: appErr?.retryable ?? true,
      };
  }
}

/** Writes conditions and figures to /status; an Event marks each change of the Ready verdict. */
async function publish(context: ReconcileContext, raw: KubeObject, cluster: NutanixCluster, verdict: Verdict, found: NutanixClusterStatus): Promise<void> {
  const now = new Date();
  const generation = cluster.metadata.generation;
  const before = cluster.status?.conditions;
  let conditions: Condition[] = setCondition(before, { type: ConditionType.CredentialsValid, ...verdict.credentials }, generation, now);
  conditions = setCondition(conditions, { type: ConditionType.Reachable, ...verdict.reachable }, generation, now);
  conditions = setCondition(conditions, { type: ConditionType.Ready, ...verdict.ready }, generation, now);
  await patchStatus(context.api, nutanixClusterType, raw, { ...found, conditions, ...(generation === undefined ? {} : { observedGeneration: generation }) }, context.signal);

  const previous = findCondition(before, ConditionType.Ready);
  if (previous?.status !== verdict.ready.status || previous.reason !== verdict.ready.reason) {
    const ok = verdict.ready.status === 'True';
    context.log.info({ ready: verdict.ready.status, reason: verdict.ready.reason }, verdict.ready.message);
    await context.events.record(
      {
        regarding: raw,
        type: ok ? EventKind.Normal : EventKind.Warning,
        reason: ok ? 'Ready' : verdict.ready.reason,
        action: 'Discover',
        note: verdict.ready.message,
      },
      context.signal,
    );
  }
}
