/**
 * Crash failpoints for tests that must prove recovery from a process killed at an exact step (the way etcd and
 * TiKV test crash safety). Inert unless SENDENSE_FAILPOINT names the step.
 */
export const Failpoint = { BeforeCommit: 'before-commit' } as const;
export type Failpoint = (typeof Failpoint)[keyof typeof Failpoint];

export function failpoint(name: Failpoint): void {
  if (process.env.SENDENSE_FAILPOINT === name) process.kill(process.pid, 'SIGKILL');
}
