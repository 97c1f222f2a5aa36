/**
 * Reading rendered Kubernetes manifests in the packaging tests: multi-document YAML parsed with zod into the few
 * shapes the tests inspect (unknown fields kept, so a test sees exactly what helm rendered).
 */
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { z } from 'zod';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const chartDir = join(repoRoot, 'helm/sendense-nutanix');
export const installYamlPath = join(repoRoot, 'manifests/install.yaml');
export const examplesDir = join(repoRoot, 'manifests/examples');
export const renderScript = join(repoRoot, 'scripts/render-manifests.sh');

const stringMap = z.record(z.string(), z.string());

export const manifest = z.looseObject({
  apiVersion: z.string(),
  kind: z.string(),
  metadata: z.looseObject({ name: z.string(), namespace: z.string().optional(), labels: stringMap.optional() }),
});
export type Manifest = z.infer<typeof manifest>;

const policyRule = z.strictObject({ apiGroups: z.array(z.string()), resources: z.array(z.string()), verbs: z.array(z.string()) });
export const role = manifest.extend({ rules: z.array(policyRule) });
export const roleBinding = manifest.extend({
  roleRef: z.object({ apiGroup: z.string(), kind: z.string(), name: z.string() }),
  subjects: z.array(z.object({ kind: z.string(), name: z.string(), namespace: z.string() })),
});
export const serviceAccount = manifest.extend({ imagePullSecrets: z.array(z.object({ name: z.string() })).optional() });

const envVar = z.object({ name: z.string(), value: z.string().optional(), valueFrom: z.looseObject({}).optional() });
const httpProbe = z.looseObject({ httpGet: z.object({ path: z.string(), port: z.union([z.string(), z.number()]) }) });
const container = z.looseObject({
  name: z.string(),
  image: z.string(),
  imagePullPolicy: z.string(),
  command: z.array(z.string()),
  env: z.array(envVar),
  ports: z.array(z.object({ name: z.string(), containerPort: z.number(), protocol: z.string() })),
  livenessProbe: httpProbe,
  readinessProbe: httpProbe,
  securityContext: z.looseObject({}),
  resources: z.looseObject({ requests: z.record(z.string(), z.union([z.string(), z.number()])).optional() }),
  volumeMounts: z.array(z.looseObject({ name: z.string(), mountPath: z.string() })),
});
export const deployment = manifest.extend({
  spec: z.looseObject({
    replicas: z.number(),
    selector: z.object({ matchLabels: stringMap }),
    template: z.object({
      metadata: z.looseObject({ labels: stringMap }),
      spec: z.looseObject({
        serviceAccountName: z.string(),
        securityContext: z.looseObject({}),
        containers: z.tuple([container]),
        volumes: z.array(z.looseObject({ name: z.string() })),
      }),
    }),
  }),
});
export const service = manifest.extend({
  spec: z.looseObject({ selector: stringMap, ports: z.array(z.looseObject({ name: z.string(), port: z.number() })) }),
});
export const serviceMonitor = manifest.extend({
  spec: z.looseObject({ selector: z.object({ matchLabels: stringMap }), endpoints: z.array(z.looseObject({ port: z.string() })) }),
});

/** Every non-empty document of a multi-document YAML stream, as a Kubernetes object. */
export function parseManifests(text: string): Manifest[] {
  return parseAllDocuments(text).flatMap((document) => {
    if (document.errors.length > 0) throw document.errors[0];
    const value: unknown = document.toJS();
    return value === null ? [] : [manifest.parse(value)];
  });
}

/** The object of that kind and name, parsed with `schema`; fails naming what is missing. */
export function findObject<Schema extends z.ZodType>(objects: Manifest[], kind: string, name: string, schema: Schema): z.infer<Schema> {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (!found) throw new Error(`no ${kind}/${name} among ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(', ')}`);
  return schema.parse(found);
}

/** A container's env as name → literal value or valueFrom. */
export function envOf(c: { env: z.infer<typeof envVar>[] }): Record<string, string | object | undefined> {
  return Object.fromEntries(c.env.map((e) => [e.name, e.value ?? e.valueFrom]));
}
