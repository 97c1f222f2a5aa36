/**
 * Status writes through the /status subresource as a JSON merge patch that carries the resourceVersion the
 * controller read: a concurrent writer makes it fail with 409 (retryable) instead of being overwritten
 * (operator-anchors §3 "Status patching"). Merge patch replaces lists, so send whole `conditions` arrays.
 */
import type { KubeApi, KubeObject, ResourceType } from './kube.ts';
import { PatchType } from './kube.ts';

export async function patchStatus(api: KubeApi, type: ResourceType, object: KubeObject, status: Record<string, unknown>, signal: AbortSignal): Promise<unknown> {
  const { namespace = '', name, resourceVersion } = object.metadata;
  return api.patch(type, namespace, name, { metadata: { resourceVersion }, status }, { patchType: PatchType.Merge, subresource: 'status', signal });
}
