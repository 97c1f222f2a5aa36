/**
 * File-system steps that must survive a crash: data reaches the disk (fsync) before a rename makes it visible,
 * and ENOSPC surfaces as a NoSpace error that tells the user what to do.
 */
import { randomBytes } from 'node:crypto';
import { access, open, readdir, rename, rm, statfs } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';

export const noSpaceHint = 'free space on the repository filesystem or lower the retention (keep fewer restore points)';

/** Translates a Node fs error into an AppError naming the path; ENOSPC/EDQUOT become NoSpace. */
export function fsError(err: unknown, action: string, path: string): AppError {
  if (isAppError(err)) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const detail = err instanceof Error ? err.message : String(err);
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new AppError(ErrorCode.NoSpace, `${action} ${path}: no space left on device`, { cause: err, hint: noSpaceHint });
  }
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new AppError(ErrorCode.Repository, `${action} ${path}: ${detail}`, {
      cause: err,
      hint: 'the repository directory must be writable by this process (check --repo, its mount and permissions)',
    });
  }
  return new AppError(ErrorCode.Repository, `${action} ${path}: ${detail}`, { cause: err });
}

export async function fsyncPath(path: string): Promise<void> {
  let handle;
  try {
    handle = await open(path, 'r');
    await handle.sync();
  } catch (err) {
    throw fsError(err, 'fsync', path);
  } finally {
    await handle?.close();
  }
}

/**
 * Writes a whole file and fsyncs it; not atomic by itself (callers write into a staging dir or use writeFileAtomic).
 * `sync: false` leaves the fsync to a caller that fsyncs the file later anyway (a commit's fsyncTree).
 */
export async function writeFileDurable(path: string, data: string | Uint8Array, flag = 'w', options: { sync?: boolean } = {}): Promise<void> {
  let handle;
  try {
    handle = await open(path, flag, 0o644);
    await handle.writeFile(data);
    if (options.sync ?? true) await handle.sync();
  } catch (err) {
    throw fsError(err, 'write', path);
  } finally {
    await handle?.close();
  }
}

/**
 * Replaces `path` in one step: readers see the old or the new content, never a torn one. `deferSync: true` fsyncs
 * neither the file nor `dir`: for a caller that fsyncs both afterwards, before anything relies on the file (a
 * commit's fsyncTree before the rename that publishes the folder).
 */
export async function writeFileAtomic(dir: string, name: string, data: string, options: { deferSync?: boolean } = {}): Promise<void> {
  // Unique per writer: processes in different pods sharing a volume may well have the same pid.
  const temp = join(dir, `.${name}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const sync = !options.deferSync;
  await writeFileDurable(temp, data, 'w', { sync });
  try {
    await rename(temp, join(dir, name));
  } catch (err) {
    await rm(temp, { force: true });
    throw fsError(err, 'rename', join(dir, name));
  }
  if (sync) await fsyncPath(dir);
}

/**
 * fsyncs every regular file and folder below `dir`, then `dir` itself. The entries are synced at once (each is
 * a thread-pool round trip, mostly with nothing left to write); `dir` only after all of them.
 */
export async function fsyncTree(dir: string): Promise<void> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    throw fsError(err, 'list', dir);
  }
  await Promise.all(
    entries.map((entry) => {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) return fsyncTree(path);
      return entry.isFile() ? fsyncPath(path) : undefined;
    }),
  );
  await fsyncPath(dir);
}

/**
 * Bytes an unprivileged writer can still use on the filesystem holding `path`; a path not created yet is
 * measured at its nearest existing parent, where it will be created.
 */
export async function freeBytes(path: string): Promise<number> {
  for (let at = resolve(path); ; at = dirname(at)) {
    try {
      const stats = await statfs(at);
      return stats.bavail * stats.bsize;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || at === dirname(at)) throw fsError(err, 'statfs', path);
    }
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
