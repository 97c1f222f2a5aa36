/**
 * Read side of the repository: which restore points exist, how they chain, and what the next backup needs
 * from the previous one. A restore point is visible only as a final folder with a valid manifest.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { formatBytes } from '../lib/size.ts';
import { freeBytes, fsError, noSpaceHint } from './durable-fs.ts';
import { isPointId, manifestFileName, pointDir, vmDir, type VmRef } from './layout.ts';
import { ManifestSchema, type Manifest } from './manifest.ts';

export interface RestorePoint {
  vm: VmRef;
  pointId: string;
  dir: string;
  manifest: Manifest;
}

export interface UnreadablePoint {
  vm: VmRef;
  pointId: string;
  dir: string;
  reason: string;
}

export async function readManifest(dir: string): Promise<Manifest> {
  const path = join(dir, manifestFileName);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new AppError(ErrorCode.Integrity, `${path} is missing`, { hint: 'this folder is not a committed restore point' });
    }
    throw fsError(err, 'read', path);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new AppError(ErrorCode.Integrity, `${path} is not JSON`, { hint: 'the manifest is damaged; this point cannot be used' });
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) {
    throw new AppError(ErrorCode.Integrity, `${path} is not a valid manifest: ${parsed.error.message}`, {
      hint: 'the manifest is damaged or from an unknown apiVersion; this point cannot be used',
    });
  }
  return parsed.data;
}

async function subdirs(dir: string): Promise<string[]> {
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    return entries.filter((e) => e.isDirectory()).map((e) => e.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw fsError(err, 'list', dir);
  }
}

function newestLast(a: RestorePoint, b: RestorePoint): number {
  const byTime = a.manifest.createdAt.localeCompare(b.manifest.createdAt);
  return byTime !== 0 ? byTime : a.pointId.localeCompare(b.pointId);
}

/** Every final point folder of one VM, split into usable points (newest last) and unreadable ones. */
export async function scanVm(vm: VmRef): Promise<{ points: RestorePoint[]; unreadable: UnreadablePoint[] }> {
  const points: RestorePoint[] = [];
  const unreadable: UnreadablePoint[] = [];
  for (const name of await subdirs(vmDir(vm))) {
    if (!isPointId(name)) continue;
    const dir = pointDir(vm, name);
    try {
      const manifest = await readManifest(dir);
      if (manifest.pointId !== name) throw new AppError(ErrorCode.Integrity, `manifest names point ${manifest.pointId}`);
      points.push({ vm, pointId: name, dir, manifest });
    } catch (err) {
      unreadable.push({ vm, pointId: name, dir, reason: err instanceof Error ? err.message : String(err) });
    }
  }
  return { points: points.sort(newestLast), unreadable };
}

export async function listVmPoints(vm: VmRef): Promise<RestorePoint[]> {
  return (await scanVm(vm)).points;
}

/** Every VM folder in the repository. */
export async function listVms(repo: string): Promise<VmRef[]> {
  const vms: VmRef[] = [];
  for (const clusterUuid of await subdirs(repo)) {
    if (clusterUuid.startsWith('.')) continue;
    for (const vmUuid of await subdirs(join(repo, clusterUuid))) {
      if (!vmUuid.startsWith('.')) vms.push({ repo, clusterUuid, vmUuid });
    }
  }
  return vms;
}

/** VMs whose UUID or (latest recorded) name is `nameOrUuid`. */
export async function findVms(repo: string, nameOrUuid: string): Promise<VmRef[]> {
  const found: VmRef[] = [];
  for (const vm of await listVms(repo)) {
    if (vm.vmUuid === nameOrUuid) {
      found.push(vm);
      continue;
    }
    const latest = (await listVmPoints(vm)).at(-1);
    if (latest?.manifest.vm.name === nameOrUuid) found.push(vm);
  }
  return found;
}

/** Exactly one VM by UUID or name, else NotFound / InvalidInput (ambiguous name, listing the UUIDs). */
export async function resolveVm(repo: string, nameOrUuid: string): Promise<VmRef> {
  const found = await findVms(repo, nameOrUuid);
  const only = found[0];
  if (only && found.length === 1) return only;
  if (found.length === 0) {
    throw new AppError(ErrorCode.NotFound, `--vm: no restore points of "${nameOrUuid}" in ${repo}`, {
      hint: 'give a VM name or UUID that has been backed up into this --repo (see the points command)',
    });
  }
  throw new AppError(ErrorCode.InvalidInput, `--vm: "${nameOrUuid}" names ${found.length} VMs: ${found.map((v) => v.vmUuid).join(', ')}`, {
    hint: 'pass the VM UUID instead of its name',
  });
}

/** All points of the repository, or of the VMs matching `vm`; per VM newest last. */
export async function listPoints(repo: string, vm?: string): Promise<RestorePoint[]> {
  const vms = vm === undefined ? await listVms(repo) : [await resolveVm(repo, vm)];
  const all: RestorePoint[] = [];
  for (const ref of vms) all.push(...(await listVmPoints(ref)));
  return all;
}

/** `latest` or a point id. */
export async function resolvePoint(vm: VmRef, idOrLatest = 'latest'): Promise<RestorePoint> {
  const points = await listVmPoints(vm);
  const point = idOrLatest === 'latest' ? points.at(-1) : points.find((p) => p.pointId === idOrLatest);
  if (point) return point;
  throw new AppError(ErrorCode.NotFound, `--point: no restore point "${idOrLatest}" for VM ${vm.vmUuid}`, {
    hint: points.length ? `use latest or one of: ${points.map((p) => p.pointId).join(', ')}` : 'this VM has no restore points yet',
  });
}

/** The point and its ancestors down to the full, top first (from points already read); a missing or unreadable parent is an Integrity error. */
export function chainOf(points: readonly RestorePoint[], pointId: string): RestorePoint[] {
  const byId = new Map(points.map((p) => [p.pointId, p]));
  const chain: RestorePoint[] = [];
  let id: string | null = pointId;
  while (id !== null) {
    const point = byId.get(id);
    if (!point) {
      const child = chain.at(-1);
      throw new AppError(ErrorCode.Integrity, child ? `restore point ${child.pointId} needs parent ${id}, which is missing or unreadable` : `no restore point ${id}`, {
        hint: child ? 'the chain is broken: restore an older intact point and take a new full backup' : 'check the point id (see the points command)',
      });
    }
    if (chain.includes(point)) throw new AppError(ErrorCode.Integrity, `restore point ${id} is its own ancestor`);
    chain.push(point);
    id = point.manifest.parentPointId;
  }
  return chain;
}


/** Refuses to start a backup that cannot fit: NoSpace when fewer than `neededBytes` are free under `repo`. */
export async function ensureFreeSpace(repo: string, neededBytes: number): Promise<number> {
  const free = await freeBytes(repo);
  if (free < neededBytes) {
    throw new AppError(ErrorCode.NoSpace, `repository ${repo} has ${formatBytes(free)} free, the backup needs up to ${formatBytes(neededBytes)}`, {
      hint: noSpaceHint,
    });
  }
  return free;
}

export interface PointSummary {
  vmUuid: string;
  vmName: string;
  clusterUuid: string;
  pointId: string;
  parentPointId: string | null;
  type: Manifest['type'];
  typeReason: string;
  /** 0 for a full, n for the n-th incremental on top of it. */
  chainDepth: number;
  createdAt: string;
  completedAt: string;
  consistency: Manifest['consistency']['obtained'];
  recoveryPointId: string;
  disks: number;
  logicalBytes: number;
  transferredBytes: number;
}

/** One line per point for `points` (table or -o json); `points` as listPoints returns them. */
export function summarizePoints(points: RestorePoint[]): PointSummary[] {
  const byId = new Map(points.map((p) => [`${p.vm.vmUuid}/${p.pointId}`, p]));
  const depth = (p: RestorePoint): number => {
    let n = 0;
    for (let parent = p.manifest.parentPointId; parent !== null; n++) {
      const next = byId.get(`${p.vm.vmUuid}/${parent}`);
      if (!next) return n + 1;
      parent = next.manifest.parentPointId;
    }
    return n;
  };
  return points.map((p) => ({
    vmUuid: p.vm.vmUuid,
    vmName: p.manifest.vm.name,
    clusterUuid: p.vm.clusterUuid,
    pointId: p.pointId,
    parentPointId: p.manifest.parentPointId,
    type: p.manifest.type,
    typeReason: p.manifest.typeReason,
    chainDepth: depth(p),
    createdAt: p.manifest.createdAt,
    completedAt: p.manifest.completedAt,
    consistency: p.manifest.consistency.obtained,
    recoveryPointId: p.manifest.recoveryPoint.id,
    disks: p.manifest.disks.length,
    logicalBytes: p.manifest.disks.reduce((sum, d) => sum + d.logicalSizeBytes, 0),
    transferredBytes: p.manifest.disks.reduce((sum, d) => sum + d.stats.transferredBytes, 0),
  }));
}
