/** NutanixCluster (`ntnx`): one Prism Central, how to reach and authenticate to it, and how hard to use it. */
import { z } from 'zod';
import { ageColumn, celRules, conditions, customResource, objectName, observedGeneration, timestamp, type CustomResourceKind } from './common.ts';

export const nutanixClusterSpec = z
  .object({
    endpoint: z
      .string()
      .min(1)
      .max(2048)
      .meta(celRules({ rule: "isURL(self) && url(self).getScheme() == 'https'", message: 'endpoint must be an https:// URL, e.g. https://pc.example.com:9440' }))
      .describe('Prism Central base URL, e.g. https://pc.example.com:9440.'),
    credentialsSecretRef: z
      .object({
        name: objectName.describe('Secret in the same namespace.'),
        usernameKey: z.string().min(1).default('username').describe('Key of the user name in the Secret.'),
        passwordKey: z.string().min(1).default('password').describe('Key of the password in the Secret.'),
      })
      .describe('Secret with the Prism Central user and password; a rotated Secret takes effect without a restart.'),
    caSecretRef: z
      .object({
        name: objectName.describe('Secret (or ConfigMap-like Secret) in the same namespace.'),
        key: z.string().min(1).default('ca.crt').describe('Key of the PEM bundle in the Secret.'),
      })
      .optional()
      .describe('CA bundle that signed Prism Central’s certificate, when it is not publicly trusted.'),
    insecureSkipTLSVerify: z.boolean().default(false).describe('Skip TLS verification of Prism Central. For labs only.'),
    concurrency: z
      .object({
        maxVMs: z.number().int().min(1).max(64).default(4).describe('VMs backed up at once on this cluster.'),
        maxDisks: z.number().int().min(1).max(256).default(8).describe('Disks copied at once across those VMs.'),
        prismRequestsPerSecond: z.number().int().min(1).max(1000).default(10).describe('Prism API requests per second.'),
      })
      .prefault({})
      .meta(celRules({ rule: 'self.maxDisks >= self.maxVMs', message: 'maxDisks must be at least maxVMs: every VM has a disk', fieldPath: '.maxDisks' }))
      .describe('Limits that keep backups from overloading Prism Central and the clusters.'),
  })
  .meta(
    celRules({
      rule: '!(has(self.caSecretRef) && self.insecureSkipTLSVerify)',
      message: 'set either caSecretRef or insecureSkipTLSVerify, not both',
      fieldPath: '.insecureSkipTLSVerify',
      reason: 'FieldValueForbidden',
    }),
  );
export type NutanixClusterSpec = z.infer<typeof nutanixClusterSpec>;

export const nutanixClusterStatus = z.object({
  observedGeneration: observedGeneration.optional(),
  conditions: conditions.optional().describe('Ready, CredentialsValid, Reachable.'),
  prismCentralVersion: z.string().optional(),
  apiGenerations: z.array(z.string()).optional().describe('Prism API generations in use, e.g. v3, v4.'),
  changedRegionsSupported: z.boolean().optional().describe('Whether incremental backups can ask Nutanix for changed regions.'),
  clusters: z
    .array(z.object({ name: z.string(), uuid: z.string(), aosVersion: z.string().optional() }))
    .optional()
    .describe('AHV clusters registered to this Prism Central.'),
  vmCount: z.number().int().min(0).optional(),
  lastDiscoveryTime: timestamp.optional(),
});
export type NutanixClusterStatus = z.infer<typeof nutanixClusterStatus>;

export const nutanixCluster = customResource('NutanixCluster', nutanixClusterSpec, nutanixClusterStatus);
export type NutanixCluster = z.infer<typeof nutanixCluster>;

export const nutanixClusterKind: CustomResourceKind = {
  kind: 'NutanixCluster',
  plural: 'nutanixclusters',
  singular: 'nutanixcluster',
  shortNames: ['ntnx'],
  description: 'A Nutanix Prism Central whose AHV VMs can be backed up.',
  spec: nutanixClusterSpec,
  status: nutanixClusterStatus,
  printerColumns: [
    { name: 'Endpoint', type: 'string', jsonPath: '.spec.endpoint' },
    { name: 'Ready', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].status' },
    { name: 'PC Version', type: 'string', jsonPath: '.status.prismCentralVersion' },
    { name: 'VMs', type: 'integer', jsonPath: '.status.vmCount' },
    ageColumn,
  ],
};
