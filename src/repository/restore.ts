/**
 * restore: one disk of one restore point as a standalone image. The chain is verified while it is flattened
 * (flatten.ts: resolved once, copied in long runs); the output is written under a temporary name beside `out`
 * and renamed only when the copy is durable and the chain passed verification, so `out` is either a complete,
 * verified image or absent.
 */
import { randomBytes } from 'node:crypto';
import { rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { AppError, ErrorCode } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { fsError, fsyncPath } from './durable-fs.ts';
import { flattenImage, type FlattenResult } from './flatten.ts';
import { resolvePoint, resolveVm, type RestorePoint } from './points.ts';
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
  /** Where a fallback to qemu-img convert is logged. */
  logger?: Logger;
}

export interface RestoreResult {
  point: RestorePoint;
  diskIndex: number;
  out: string;
  format: 'raw' | 'qcow2';
  sizeBytes: number;
  verification: VerifyReport;
  /** How the image was flattened: our chain reader, or qemu-img convert and why. */
  flatten: FlattenResult;
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
  const temp = join(dirname(request.out), `.${basename(request.out)}.restoring-${randomBytes(3).toString('hex')}`);
  // The check opens every image of the chain with qemu-img, mostly process start-up: it runs beside the copy
  // instead of before it. A chain that fails it never reaches `out`.
  const copyAbort = new AbortController();
  const copying = flattenImage(join(point.dir, disk.image), temp, request.format, {
    signal: signal ? AbortSignal.any([signal, copyAbort.signal]) : copyAbort.signal,
    logger: request.logger,
  }).then(
    (result) => ({ result }),
    (error: unknown) => ({ error }),
  );
  const discardCopy = async () => {
    copyAbort.abort(new Error('restore stopped'));
    await copying;
    await rm(temp, { force: true });
  };
  let verification: VerifyReport;
  try {
    verification = await verifyRepository(request.repo, {
      vm: vm.vmUuid,
      point: point.pointId,
      disk: request.diskIndex,
      checksums: request.verifyChecksums ?? false,
      signal,
    });
  } catch (err) {
    await discardCopy();
    throw err;
  }
  const [first] = verification.issues;
  if (first) {
    await discardCopy();
    throw new AppError(ErrorCode.Integrity, `restore point ${point.pointId} disk ${request.diskIndex} fails verification: ${first.message}`, {
      hint: 'run the verify command for the full report; restore an older intact point instead',
    });
  }
  const copied = await copying;
  if ('error' in copied) {
    await rm(temp, { force: true });
    throw copied.error;
  }
  try {
    await rename(temp, request.out);
  } catch (err) {
    await rm(temp, { force: true });
    throw fsError(err, 'rename restored image to', request.out);
  }
  await fsyncPath(dirname(request.out));
  return { point, diskIndex: request.diskIndex, out: request.out, format: request.format, sizeBytes: disk.logicalSizeBytes, verification, flatten: copied.result };
}
