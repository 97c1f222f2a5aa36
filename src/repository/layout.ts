/**
 * Where things live in a repository: `<repo>/<cluster-uuid>/<vm-uuid>/<point-id>/disk-<i>.qcow2` plus
 * `manifest.json`. Names starting with a dot (staging, trash, lock) are never restore points.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { AppError, ErrorCode } from '../lib/errors.ts';

/** `20261126T201500Z-3fa2c1`: UTC second, then 6 random hex digits; sorts by time as plain text. */
export const pointIdPattern = /^\d{8}T\d{6}Z-[0-9a-f]{6}$/;

export function newPointId(now: Date = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
  return `${stamp}-${randomBytes(3).toString('hex')}`;
}

export function isPointId(name: string): boolean {
  return pointIdPattern.test(name);
}

/** UUIDs and point ids become folder names, so anything that could escape the repository is refused. */
export function assertSafeName(value: string, field: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(value) || value.includes('..')) {
    throw new AppError(ErrorCode.InvalidInput, `${field}: "${value}" is not usable as a folder name`, {
      hint: `${field} must be a UUID or point id (letters, digits, '-', '_', '.')`,
    });
  }
}

export interface VmRef {
  repo: string;
  clusterUuid: string;
  vmUuid: string;
}

export function vmDir(vm: VmRef): string {
  assertSafeName(vm.clusterUuid, 'cluster uuid');
  assertSafeName(vm.vmUuid, 'vm uuid');
  return join(vm.repo, vm.clusterUuid, vm.vmUuid);
}

export function pointDir(vm: VmRef, pointId: string): string {
  assertSafeName(pointId, 'point id');
  return join(vmDir(vm), pointId);
}

export const stagingPrefix = '.staging-';
export const trashPrefix = '.trash-';
export const lockFileName = '.lock';
export const manifestFileName = 'manifest.json';
export const journalFileName = 'journal.json';

export function stagingDir(vm: VmRef, pointId: string): string {
  assertSafeName(pointId, 'point id');
  return join(vmDir(vm), `${stagingPrefix}${pointId}`);
}

export function diskImageName(index: number): string {
  return `disk-${index}.qcow2`;
}

export function diskChecksumsName(index: number): string {
  return `disk-${index}.sums.ndjson`;
}

/** How an overlay names its backing image: relative, so the chain works wherever the repository is copied. */
export function relativeBackingFile(parentPointId: string, index: number): string {
  return `../${parentPointId}/${diskImageName(index)}`;
}

/** Per-disk result of a multi-process point (one export Job per disk), read by the commit. */
export function diskResultName(index: number): string {
  return `disk-${index}.result.json`;
}
