/**
 * The qemu-img calls the repository needs, with their JSON output parsed by zod. qemu-img is the reference
 * reader of the format we write, so checks and restores go through it rather than through our own parser.
 */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { z } from 'zod';
import { AppError, ErrorCode, abortError } from '../lib/errors.ts';

export interface QemuImgResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** Runs qemu-img; a non-zero exit is returned, not thrown, because `check` reports corruption through it. */
export function runQemuImg(args: string[], signal?: AbortSignal): Promise<QemuImgResult> {
  return new Promise((resolve, reject) => {
    execFile('qemu-img', args, { signal, maxBuffer: 256 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && signal?.aborted) return reject(abortError(signal, `qemu-img ${args[0]}`));
      if (err && typeof err.code !== 'number') {
        return reject(
          new AppError(ErrorCode.Internal, `qemu-img ${args[0]} could not run: ${err.message}`, {
            cause: err,
            hint: 'install qemu-utils (qemu-img must be on PATH)',
          }),
        );
      }
      resolve({ stdout, stderr, exitCode: err && typeof err.code === 'number' ? err.code : 0 });
    });
  });
}

const noSpacePattern = /No space left on device/i;

/** A failed qemu-img call as an AppError; ENOSPC becomes NoSpace so callers can tell a full disk apart. */
export function qemuImgFailure(what: string, result: QemuImgResult): AppError {
  const message = `${what}: qemu-img exited ${result.exitCode}: ${result.stderr.trim()}`;
  if (noSpacePattern.test(result.stderr)) {
    return new AppError(ErrorCode.NoSpace, message, {
      hint: 'free space on the target filesystem or lower the retention (keep fewer restore points)',
    });
  }
  return new AppError(ErrorCode.Repository, message);
}

function parseJsonOutput<T>(schema: z.ZodType<T>, what: string, result: QemuImgResult): T {
  let raw: unknown;
  try {
    raw = JSON.parse(result.stdout);
  } catch (err) {
    throw new AppError(ErrorCode.BadResponse, `${what}: qemu-img printed no JSON: ${result.stderr.trim()}`, { cause: err });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new AppError(ErrorCode.BadResponse, `${what}: unexpected qemu-img JSON: ${parsed.error.message}`);
  }
  return parsed.data;
}

export const ImageInfoSchema = z.object({
  filename: z.string(),
  format: z.string(),
  'virtual-size': z.number().int().nonnegative(),
  'backing-filename': z.string().optional(),
  'full-backing-filename': z.string().optional(),
  'backing-filename-format': z.string().optional(),
  'format-specific': z
    .object({ type: z.string(), data: z.object({ corrupt: z.boolean().optional() }).loose() })
    .loose()
    .optional(),
});
export type ImageInfo = z.infer<typeof ImageInfoSchema>;

/** One image, without opening its backing file: a chain is checked link by link, one open per image. */
export async function imageInfo(imagePath: string, signal?: AbortSignal): Promise<ImageInfo> {
  const what = `qemu-img info ${imagePath}`;
  const result = await runQemuImg(['info', '--output=json', '-U', imagePath], signal);
  if (result.exitCode !== 0) throw qemuImgFailure(what, result);
  return parseJsonOutput(ImageInfoSchema, what, result);
}

export const ImageCheckSchema = z.object({
  filename: z.string(),
  format: z.string(),
  'check-errors': z.number().int(),
  corruptions: z.number().int().optional(),
  leaks: z.number().int().optional(),
  'corruptions-fixed': z.number().int().optional(),
  'leaks-fixed': z.number().int().optional(),
  'total-clusters': z.number().int().optional(),
  'allocated-clusters': z.number().int().optional(),
});

export interface ImageCheck {
  ok: boolean;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  /** qemu-img's own words when the image is not clean (it names the damaged clusters on stderr). */
  message?: string;
}

/**
 * `qemu-img check` of one image. Exit 0 = clean, 2 = corrupt, 3 = leaked clusters only (harmless for reads but
 * still reported), 1 = the check itself failed (unreadable header and the like).
 * The image is opened without its backing file: the check covers this image's own metadata, links are checked
 * with imageInfo, and opening every ancestor per image made checking a chain of N cost N(N+1)/2 opens.
 */
export async function checkImage(imagePath: string, signal?: AbortSignal): Promise<ImageCheck> {
  const what = `qemu-img check ${imagePath}`;
  const withoutBacking = { driver: 'qcow2', file: { driver: 'file', filename: resolve(imagePath) }, backing: null };
  const result = await runQemuImg(['check', '--output=json', '-U', `json:${JSON.stringify(withoutBacking)}`], signal);
  if (result.exitCode === 1 || result.stdout.trim() === '') {
    return { ok: false, corruptions: 0, leaks: 0, checkErrors: 1, message: result.stderr.trim() || 'qemu-img check failed' };
  }
  const parsed = parseJsonOutput(ImageCheckSchema, what, result);
  const corruptions = parsed.corruptions ?? 0;
  const leaks = parsed.leaks ?? 0;
  const ok = result.exitCode === 0 && corruptions === 0 && leaks === 0 && parsed['check-errors'] === 0;
  const check: ImageCheck = { ok, corruptions, leaks, checkErrors: parsed['check-errors'] };
  if (!ok) check.message = result.stderr.trim() || `${corruptions} corruptions, ${leaks} leaked clusters`;
  return check;
}

/** Creates a qcow2; with `backingFile` (relative to the new image's folder) an overlay over it. */
export async function createQcow2(
  imagePath: string,
  sizeBytes: number,
  options: { backingFile?: string; signal?: AbortSignal } = {},
): Promise<void> {
  const args = ['create', '-q', '-f', 'qcow2'];
  if (options.backingFile !== undefined) args.push('-b', options.backingFile, '-F', 'qcow2');
  args.push(imagePath, String(sizeBytes));
  const result = await runQemuImg(args, options.signal);
  if (result.exitCode !== 0) throw qemuImgFailure(`qemu-img create ${imagePath}`, result);
}

/** Flattens an image and its whole backing chain into one standalone image. */
export async function convertImage(
  sourcePath: string,
  outPath: string,
  format: 'raw' | 'qcow2',
  signal?: AbortSignal,
): Promise<void> {
  const result = await runQemuImg(['convert', '-q', '-f', 'qcow2', '-O', format, sourcePath, outPath], signal);
  if (result.exitCode !== 0) throw qemuImgFailure(`qemu-img convert ${sourcePath}`, result);
}
