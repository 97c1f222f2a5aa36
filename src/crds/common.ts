/**
 * Building blocks shared by the custom resources of backup.sendense.io. The zod schemas are the single source:
 * controllers parse API objects with them, and src/crds/generate.ts turns them into the CRDs' OpenAPI schemas.
 * Metadata keys starting with `x-kubernetes-` pass straight through to the CRD (CEL rules, list types).
 */
import { z } from 'zod';

export const apiGroup = 'backup.sendense.io';
export const apiVersion = 'v1alpha1';
export const groupVersion = `${apiGroup}/${apiVersion}`;

/** One `x-kubernetes-validations` entry: a CEL rule the apiserver enforces where a schema can't say it. */
export interface CelRule {
  rule: string;
  message: string;
  /** Field the error names, relative to the schema the rule sits on (e.g. `.path`). */
  fieldPath?: string;
  /** Machine-readable reason: FieldValueInvalid (default), FieldValueForbidden, FieldValueRequired, FieldValueDuplicate. */
  reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
}

export function celRules(...rules: CelRule[]): { 'x-kubernetes-validations': CelRule[] } {
  return { 'x-kubernetes-validations': rules };
}

/** Kubernetes object names (DNS subdomain). */
export const objectName = z.string().min(1).max(253).regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);

export const localObjectReference = z.object({ name: objectName.describe('Name of the object in the same namespace.') });

export const nutanixUuid = z
  .string()
  .regex(/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/)
  .describe('Nutanix UUID (8-4-4-4-12 hex digits).');

/** Where restore points are written: a PersistentVolumeClaim for now (S3 later, as a sibling field). */
export const repository = z
  .object({
    persistentVolumeClaim: z.object({
      claimName: objectName.describe('PVC in the same namespace, mounted by the export Jobs.'),
      path: z
        .string()
        .max(1024)
        .default('')
        .meta(celRules({ rule: "!self.startsWith('/') && !self.split('/').exists(p, p == '..')", message: 'path must be relative to the volume and must not contain ..' }))
        .describe('Directory inside the volume; empty means its root.'),
    }),
  })
  .describe('Repository of restore points.');

export const consistencyMode = z
  .enum(['auto', 'application', 'crash'])
  .describe('auto takes application consistency when the guest can quiesce (NGT with VSS), crash consistency otherwise.');

/** RFC 3339 time as the apiserver writes it (UTC, `Z`). */
export const timestamp = z.iso.datetime({ offset: false });

/** A count of bytes (int64 in the CRD). */
export const byteCount = () => z.number().int().min(0);

/** Shaped like metav1.Condition, so kstatus (Argo CD, Flux) and `kubectl wait --for=condition=…` understand it. */
export const condition = z.object({
  type: z
    .string()
    .min(1)
    .max(316)
    .regex(/^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$/)
    .describe('Condition type in CamelCase, e.g. Ready.'),
  status: z.enum(['True', 'False', 'Unknown']),
  observedGeneration: z.number().int().min(0).optional().describe('metadata.generation the condition was set for.'),
  lastTransitionTime: timestamp.describe('When status last changed.'),
  reason: z
    .string()
    .min(1)
    .max(1024)
    .regex(/^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/)
    .describe('CamelCase reason for the last transition.'),
  message: z.string().max(32768).describe('Human-readable details; names the offending field when the spec is invalid.'),
});
export type Condition = z.infer<typeof condition>;

export const conditions = z
  .array(condition)
  .max(32)
  .meta({ 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['type'] })
  .describe('Current state, one entry per condition type.');

export const observedGeneration = z.number().int().min(0).describe('metadata.generation the controller last acted on.');

/** The subset of ObjectMeta the controllers read; the apiserver validates the rest. */
export const objectMeta = z.looseObject({
  name: z.string(),
  namespace: z.string().optional(),
  uid: z.string().optional(),
  generation: z.number().int().optional(),
  resourceVersion: z.string().optional(),
  creationTimestamp: z.string().optional(),
  deletionTimestamp: z.string().optional(),
  labels: z.record(z.string(), z.string()).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
  finalizers: z.array(z.string()).optional(),
});

/** A whole API object of one kind: what a controller gets from a GET, LIST or WATCH. */
export function customResource<Spec extends z.ZodType, Status extends z.ZodType>(kind: string, spec: Spec, status: Status) {
  return z.looseObject({
    apiVersion: z.literal(groupVersion),
    kind: z.literal(kind),
    metadata: objectMeta,
    spec,
    status: status.optional(),
  });
}

export interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean' | 'date';
  jsonPath: string;
  description?: string;
  /** 0 = shown by `kubectl get`; higher only with `-o wide`. */
  priority?: number;
}

/** Everything the CRD generator needs to know about one kind. */
export interface CustomResourceKind {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  description: string;
  spec: z.ZodType;
  status: z.ZodType;
  printerColumns: PrinterColumn[];
}

export const ageColumn: PrinterColumn = { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' };
