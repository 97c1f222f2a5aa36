/**
 * verify: proves restore points can be restored. Per image: `qemu-img check` (metadata), the backing chain
 * qemu-img actually follows against the manifest's parent chain (files and sizes), and every recorded checksum
 * re-read through the chain (zero ranges must read as zeros). Problems are collected, not thrown, into a typed
 * report naming point, disk and guest offset.
 */
import { dirname, join, resolve } from 'node:path';
// An xxh3 implementation independent of the mover's (xxhash-addon): verification should not share the writer's code.
import { xxh3 } from '@node-rs/xxhash';
import { isAppError, throwIfAborted } from '../lib/errors.ts';
import { exists } from './durable-fs.ts';
import { readChecksumsFile, type ByteRange } from './checksums.ts';
import { openImageReader, type ImageReader } from './image-reader.ts';
import type { VmRef } from './layout.ts';
import type { ManifestDisk } from './manifest.ts';
import { chainOf, listVms, resolveVm, scanVm, type RestorePoint } from './points.ts';
import { checkImage, imageInfo } from './qemu-img.ts';

export const VerifyIssueKind = {
  UnreadablePoint: 'unreadable-point',
  MissingFile: 'missing-file',
  ImageCheck: 'image-check',
  Chain: 'chain',
  Checksum: 'checksum',
  NonZero: 'non-zero',
  Unreadable: 'unreadable',
} as const;
export type VerifyIssueKind = (typeof VerifyIssueKind)[keyof typeof VerifyIssueKind];

export interface VerifyIssue {
  kind: VerifyIssueKind;
  vmUuid: string;
  pointId: string;
  diskIndex?: number;
  /** Guest offset and length of the damaged range (checksum, non-zero). */
  range?: ByteRange;
  message: string;
}

export interface VerifyReport {
  ok: boolean;
  points: number;
  images: number;
  blocksChecked: number;
  bytesChecked: number;
  issues: VerifyIssue[];
}

export interface VerifyOptions {
  /** VM name or UUID; all VMs when absent. */
  vm?: string;
  /** A point id or `latest`; with it, that point and its ancestors are verified. Needs `vm`. */
  point?: string;
  /** Only this disk index of each point. */
  disk?: number;
  /** Re-read checksums (default true); false checks metadata and chain links only. */
  checksums?: boolean;
  signal?: AbortSignal;
  /** Swappable for tests of the reader itself; default qemu-nbd + the NBD client. */
  openReader?: (imagePath: string, signal?: AbortSignal) => Promise<ImageReader>;
}

/** xxh3-64 as the manifest stores it: 16 lower-case hex digits. */
export function xxh3Hex(data: Uint8Array): string {
  return xxh3.xxh64(data).toString(16).padStart(16, '0');
}

/** Largest single read while checking a zero range. */
const ZERO_READ_BYTES = 4 * 1024 * 1024;
const READS_IN_FLIGHT = 8;
/**
 * Points checked at once. Checking an image is mostly qemu-img start-up (two short processes per image), so a
 * 30-deep chain checked one image at a time spent seconds waiting on process launches.
 */
const POINTS_IN_FLIGHT = 4;
const zeros = Buffer.alloc(ZERO_READ_BYTES);

function message(err: unknown): string {
  if (isAppError(err)) return err.oneLine();
  return err instanceof Error ? err.message : String(err);
}

/** The images disk `index` of `point` depends on, top first, as the manifests describe them. */
function expectedDiskChain(chain: RestorePoint[], index: number): { point: RestorePoint; disk: ManifestDisk; path: string }[] {
  const links: { point: RestorePoint; disk: ManifestDisk; path: string }[] = [];
  for (const point of chain) {
    const disk = point.manifest.disks.find((d) => d.index === index);
    if (!disk) break;
    links.push({ point, disk, path: resolve(point.dir, disk.image) });
    if (disk.backingFile === null) break;
  }
  return links;
}

/**
 * Compares disk `index`'s link to its parent with what the manifests say; returns the problems as text. Each
 * ancestor's own link is checked when that point is verified (verify always takes a point with its ancestors), so a
 * chain of N costs N image opens, not N(N+1)/2.
 */
async function chainProblems(chain: RestorePoint[], index: number, signal?: AbortSignal): Promise<string[]> {
  const [top, parent] = expectedDiskChain(chain, index);
  if (!top) return [];
  if (top.disk.backingFile !== null && !parent) {
    return [`${top.point.pointId} names backing file ${top.disk.backingFile}, but its parent point has no disk ${index}`];
  }
  if (parent && !(await exists(parent.path))) return [`image ${parent.path} is missing`];
  const info = await imageInfo(top.path, signal);
  const problems: string[] = [];
  if (info['virtual-size'] !== top.disk.logicalSizeBytes) {
    problems.push(`${top.point.pointId}: image is ${info['virtual-size']} bytes, the manifest says ${top.disk.logicalSizeBytes}`);
  }
  const backing = info['backing-filename'] ?? null;
  if (backing !== top.disk.backingFile) {
    problems.push(`${top.point.pointId}: backing file is ${backing}, the manifest says ${top.disk.backingFile}`);
  } else if (parent) {
    // qemu-img names the backing image by combining its name with the path of the image above: relative to our cwd.
    const opened = resolve(info['full-backing-filename'] ?? join(dirname(top.path), backing ?? ''));
    if (opened !== parent.path) problems.push(`link to the parent: qemu-img opens ${opened}, the manifest says ${parent.path}`);
  }
  return problems;
}

/** Runs `work` over `items` with at most `limit` in flight. */
async function eachLimited<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await work(items[next++]!);
  });
  await Promise.all(runners);
}

async function verifyChecksums(
  point: RestorePoint,
  disk: ManifestDisk,
  reader: ImageReader,
  report: VerifyReport,
  signal?: AbortSignal,
): Promise<void> {
  const base = { vmUuid: point.vm.vmUuid, pointId: point.pointId, diskIndex: disk.index };
  const sums = await readChecksumsFile(join(point.dir, disk.checksums), disk.index);
  await eachLimited(sums.blocks, READS_IN_FLIGHT, async (block) => {
    throwIfAborted(signal, 'verify');
    const data = await reader.read(block.offset, block.length, signal);
    report.blocksChecked++;
    report.bytesChecked += block.length;
    const actual = xxh3Hex(data);
    if (actual !== block.hash) {
      report.issues.push({
        ...base,
        kind: VerifyIssueKind.Checksum,
        range: { offset: block.offset, length: block.length },
        message: `disk ${disk.index} of ${point.pointId}: guest bytes ${block.offset}..${block.offset + block.length - 1} hash ${actual}, recorded ${block.hash}`,
      });
    }
  });
  const zeroChunks = sums.zeroRanges.flatMap((range) => {
    const chunks: ByteRange[] = [];
    for (let at = range.offset; at < range.offset + range.length; at += ZERO_READ_BYTES) {
      chunks.push({ offset: at, length: Math.min(ZERO_READ_BYTES, range.offset + range.length - at) });
    }
    return chunks;
  });
  await eachLimited(zeroChunks, READS_IN_FLIGHT, async (chunk) => {
    throwIfAborted(signal, 'verify');
    const data = await reader.read(chunk.offset, chunk.length, signal);
    report.bytesChecked += chunk.length;
    // equals() is a native memcmp; the byte-wise search runs only to name the offending byte.
    if (!data.equals(zeros.subarray(0, data.length))) {
      const firstNonZero = data.findIndex((byte) => byte !== 0);
      report.issues.push({
        ...base,
        kind: VerifyIssueKind.NonZero,
        range: chunk,
        message: `disk ${disk.index} of ${point.pointId}: recorded as zeros, but guest byte ${chunk.offset + firstNonZero} is ${data[firstNonZero]}`,
      });
    }
  });
}

/** `vmPoints`: every readable point of the VM, read once per verify rather than once per point. */
async function verifyPoint(point: RestorePoint, vmPoints: readonly RestorePoint[], options: VerifyOptions, report: VerifyReport): Promise<void> {
  const { signal } = options;
  const base = { vmUuid: point.vm.vmUuid, pointId: point.pointId };
  report.points++;
  let chain: RestorePoint[];
  try {
    chain = chainOf(vmPoints, point.pointId);
  } catch (err) {
    report.issues.push({ ...base, kind: VerifyIssueKind.Chain, message: message(err) });
    chain = [point];
  }
  const openReader = options.openReader ?? openImageReader;
  for (const disk of point.manifest.disks) {
    if (options.disk !== undefined && disk.index !== options.disk) continue;
    throwIfAborted(signal, 'verify');
    const imagePath = join(point.dir, disk.image);
    const diskBase = { ...base, diskIndex: disk.index };
    if (!(await exists(imagePath))) {
      report.issues.push({ ...diskBase, kind: VerifyIssueKind.MissingFile, message: `disk ${disk.index} of ${point.pointId}: ${imagePath} is missing` });
      continue;
    }
    report.images++;
    try {
      const [check, linkProblems] = await Promise.all([checkImage(imagePath, signal), chainProblems(chain, disk.index, signal)]);
      if (!check.ok) {
        report.issues.push({ ...diskBase, kind: VerifyIssueKind.ImageCheck, message: `disk ${disk.index} of ${point.pointId}: qemu-img check: ${check.message}` });
      }
      for (const problem of linkProblems) {
        report.issues.push({ ...diskBase, kind: VerifyIssueKind.Chain, message: `disk ${disk.index} of ${point.pointId}: ${problem}` });
      }
    } catch (err) {
      report.issues.push({ ...diskBase, kind: VerifyIssueKind.Unreadable, message: `disk ${disk.index} of ${point.pointId}: ${message(err)}` });
      continue;
    }
    if (options.checksums === false) continue;
    let reader: ImageReader | undefined;
    try {
      reader = await openReader(imagePath, signal);
      await verifyChecksums(point, disk, reader, report, signal);
    } catch (err) {
      if (signal?.aborted) throw err;
      report.issues.push({ ...diskBase, kind: VerifyIssueKind.Unreadable, message: `disk ${disk.index} of ${point.pointId}: ${message(err)}` });
    } finally {
      await reader?.close();
    }
  }
}

/** The point with its ancestors; a broken chain is reported when the point itself is verified. */
function chainOrTarget(points: readonly RestorePoint[], target: RestorePoint): RestorePoint[] {
  try {
    return chainOf(points, target.pointId);
  } catch {
    return [target];
  }
}

/** Verifies the whole repository, one VM, or one point with its ancestors. */
export async function verifyRepository(repo: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const report: VerifyReport = { ok: true, points: 0, images: 0, blocksChecked: 0, bytesChecked: 0, issues: [] };
  const vms: VmRef[] = options.vm === undefined ? await listVms(repo) : [await resolveVm(repo, options.vm)];
  for (const vm of vms) {
    const { points, unreadable } = await scanVm(vm);
    let selected = points;
    if (options.point !== undefined) {
      const target = options.point === 'latest' ? points.at(-1) : points.find((p) => p.pointId === options.point);
      selected = target ? chainOrTarget(points, target).reverse() : [];
      if (!target) {
        report.issues.push({ kind: VerifyIssueKind.UnreadablePoint, vmUuid: vm.vmUuid, pointId: options.point, message: `no readable restore point ${options.point}` });
      }
    } else {
      for (const u of unreadable) report.issues.push({ kind: VerifyIssueKind.UnreadablePoint, vmUuid: vm.vmUuid, pointId: u.pointId, message: u.reason });
    }
    await eachLimited(selected, POINTS_IN_FLIGHT, (point) => verifyPoint(point, points, options, report));
  }
  report.issues.sort((a, b) => a.pointId.localeCompare(b.pointId) || (a.diskIndex ?? -1) - (b.diskIndex ?? -1) || (a.range?.offset ?? 0) - (b.range?.offset ?? 0));
  report.ok = report.issues.length === 0;
  return report;
}
