/**
 * restore: one disk of one restore point as a standalone image. qemu-img flattens the chain; the output is
 * written under a temporary name beside `out` and renamed, so `out` is either complete or absent.
 */
import { randomBytes } from 'node:crypto';
import { rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { fsError, fsyncPath } from './durable-fs.ts';
import { resolvePoint, resolveVm, type RestorePoint } from './points.ts';
import { convertImage } from './qemu-img.ts';
import { verifyRepository, type VerifyReport } from './verify.ts';

export interface RestoreRequest {
  repo: string;
  /** VM name or UUID. */
  vm: string;
  /** Point id or `latest` (default). */
  point?: string;
  diskIndex: number;
  out: string;
  format: 'raw' | 'qcow2';
  /** Also re-read every checksum of the chain before restoring (default: metadata and chain links only). */
  verifyChecksums?: boolean;
  signal?: AbortSignal;
}

export interface RestoreResult {
  point: RestorePoint;
  diskIndex: number;
  out: string;
  format: 'raw' | 'qcow2';
  sizeBytes: number;
  verification: VerifyReport;
}

export async function restoreDisk(request: RestoreRequest): Promise<RestoreResult> {
  const { signal } = request;
  const vm = await resolveVm(request.repo, request.vm);
  const point = await resolvePoint(vm, request.point ?? 'latest');
  const disk = point.manifest.disks.find((d) => d.index === request.diskIndex);
  if (!disk) {
    throw new AppError(ErrorCode.InvalidInput, `--disk: restore point ${point.pointId} has no disk ${request.diskIndex}`, {
      hint: `use one of: ${point.manifest.disks.map((d) => d.index).join(', ')}`,
    });
  }
  const verification = await verifyRepository(request.repo, {
    vm: vm.vmUuid,
    point: point.pointId,
    disk: request.diskIndex,
    checksums: request.verifyChecksums ?? false,
    signal,
  });
  const [first] = verification.issues;
  if (first) {
    throw new AppError(ErrorCode.Integrity, `restore point ${point.pointId} disk ${request.diskIndex} fails verification: ${first.message}`, {
      hint: 'run the verify command for the full report; restore an older intact point instead',
    });
  }
  const temp = join(dirname(request.out), `.${basename(request.out)}.restoring-${randomBytes(3).toString('hex')}`);
  try {
    await convertImage(join(point.dir, disk.image), temp, request.format, signal);
    await fsyncPath(temp);
    try {
      await rename(temp, request.out);
    } catch (err) {
      throw fsError(err, 'rename restored image to', request.out);
    }
    await fsyncPath(dirname(request.out));
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  return { point, diskIndex: request.diskIndex, out: request.out, format: request.format, sizeBytes: disk.logicalSizeBytes, verification };
}
