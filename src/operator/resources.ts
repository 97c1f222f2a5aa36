/** Where each kind the operator reads or writes lives in the API. */
import { apiGroup, apiVersion } from '../crds/common.ts';
import type { ResourceType } from './kube.ts';

export const nutanixClusterType: ResourceType = { group: apiGroup, version: apiVersion, plural: 'nutanixclusters', kind: 'NutanixCluster' };
export const vmBackupPolicyType: ResourceType = { group: apiGroup, version: apiVersion, plural: 'vmbackuppolicies', kind: 'VMBackupPolicy' };
export const vmBackupRunType: ResourceType = { group: apiGroup, version: apiVersion, plural: 'vmbackupruns', kind: 'VMBackupRun' };
export const secretType: ResourceType = { group: '', version: 'v1', plural: 'secrets', kind: 'Secret' };
export const persistentVolumeClaimType: ResourceType = { group: '', version: 'v1', plural: 'persistentvolumeclaims', kind: 'PersistentVolumeClaim' };
export const podType: ResourceType = { group: '', version: 'v1', plural: 'pods', kind: 'Pod' };
export const jobType: ResourceType = { group: 'batch', version: 'v1', plural: 'jobs', kind: 'Job' };
