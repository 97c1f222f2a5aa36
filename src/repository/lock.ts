/**
 * One backup per VM at a time: `<vm>/.lock` created with O_EXCL, holding pid + hostname. A lock whose pid is
 * dead on this host is stale and taken over; a lock from another host is never presumed dead, since we cannot
 * see its processes.
 */
import { open, readFile, rm, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { fsError } from './durable-fs.ts';

const LockOwnerSchema = z.object({ pid: z.number().int().positive(), hostname: z.string(), acquiredAt: z.string() });
export type LockOwner = z.infer<typeof LockOwnerSchema>;

export interface HeldLock {
  path: string;
  owner: LockOwner;
  release(): Promise<void>;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function readOwner(path: string): Promise<LockOwner | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fsError(err, 'read', path);
  }
  try {
    const parsed = LockOwnerSchema.safeParse(JSON.parse(text));
    // A lock file torn by a crash right after creation has no owner we could ask: treat it as stale.
    return parsed.success ? parsed.data : { pid: 0, hostname: hostname(), acquiredAt: '' };
  } catch {
    return { pid: 0, hostname: hostname(), acquiredAt: '' };
  }
}

function isStale(owner: LockOwner): boolean {
  return owner.hostname === hostname() && (owner.pid === 0 || !pidAlive(owner.pid));
}

async function createExclusive(path: string, owner: LockOwner): Promise<boolean> {
  let handle;
  try {
    handle = await open(path, 'wx', 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw fsError(err, 'create lock', path);
  }
  try {
    // Not fsynced: a lock only matters while its holder lives. After a machine crash every holder is dead, and a
    // lock file lost, empty or torn by that crash is stale (isStale); an fsync would only make it more likely to
    // survive with a pid that a process after the reboot may reuse.
    await handle.writeFile(JSON.stringify(owner));
  } catch (err) {
    await handle.close();
    await rm(path, { force: true });
    throw fsError(err, 'write lock', path);
  }
  await handle.close();
  return true;
}

/**
 * Removes a stale lock. Two takers racing could otherwise both see the stale lock, and the slower one would
 * delete the faster one's fresh lock; the `.takeover` file (itself O_EXCL) serialises them, and the lock is
 * re-read under it.
 */
async function removeStale(path: string, stale: LockOwner): Promise<void> {
  const guard = `${path}.takeover`;
  const me: LockOwner = { pid: process.pid, hostname: hostname(), acquiredAt: new Date().toISOString() };
  if (!(await createExclusive(guard, me))) {
    const guardOwner = await readOwner(guard);
    if (guardOwner && isStale(guardOwner)) await rm(guard, { force: true });
    return;
  }
  try {
    const current = await readOwner(path);
    if (current && current.pid === stale.pid && current.hostname === stale.hostname && current.acquiredAt === stale.acquiredAt) {
      await unlink(path).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fsError(err, 'remove stale lock', path);
      });
    }
  } finally {
    await rm(guard, { force: true });
  }
}

/** Takes the lock of the VM folder `dir` or throws Conflict naming the holder. */
export async function acquireVmLock(dir: string, what: string): Promise<HeldLock> {
  const path = join(dir, '.lock');
  const owner: LockOwner = { pid: process.pid, hostname: hostname(), acquiredAt: new Date().toISOString() };
  for (let attempt = 0; attempt < 3; attempt++) {
    if (await createExclusive(path, owner)) {
      let released = false;
      return {
        path,
        owner,
        release: async () => {
          if (released) return;
          released = true;
          const current = await readOwner(path);
          if (current && current.pid === owner.pid && current.acquiredAt === owner.acquiredAt) await rm(path, { force: true });
        },
      };
    }
    const holder = await readOwner(path);
    if (holder === undefined) continue;
    if (!isStale(holder)) {
      throw new AppError(ErrorCode.Conflict, `${what} is already running (pid ${holder.pid} on ${holder.hostname} since ${holder.acquiredAt})`, {
        retryable: true,
        hint: `wait for it to finish; if that process is gone for good, delete ${path}`,
      });
    }
    await removeStale(path, holder);
  }
  throw new AppError(ErrorCode.Conflict, `${what}: could not take ${path} after removing a stale lock`, {
    retryable: true,
    hint: 'another process is taking the same lock; retry',
  });
}
