/**
 * `sendense-nutanix mover disk|commit|cleanup`: the container command of the operator's export Jobs. The request
 * comes from env SENDENSE_MOVER_REQUEST (src/jobs/contract.ts); stdout and the termination message carry the
 * result as JSON; logs are JSON on stderr. Exit codes: MoverExitCode (docs/jobs.md).
 */
import type { Command } from 'commander';
import { ErrorCode, isAppError } from '../lib/errors.ts';
import { createLogger, type Logger } from '../lib/log.ts';
import { runCleanupJob, runCommitJob } from '../jobs/commit.ts';
import { MoverExitCode, parseMoverRequest, type MoverResult } from '../jobs/contract.ts';
import { runDiskJob } from '../jobs/disk.ts';
import { kubeRunStatusWriter } from '../jobs/run-status.ts';
import { prismFromEnv, writeTerminationMessage } from '../jobs/runtime.ts';
import { commandContext, describeFailure, exitCodes } from './program.ts';

/** A transient failure gets its own code, so the controller can tell "try a new attempt" from "give up". */
export function moverExitCode(err: unknown): number {
  if (!isAppError(err)) return MoverExitCode.Failed;
  if (err.code === ErrorCode.Aborted) return MoverExitCode.Interrupted;
  if (err.retryable) return MoverExitCode.Retryable;
  if (err.code === ErrorCode.Integrity) return MoverExitCode.Integrity;
  return exitCodes[err.code] ?? MoverExitCode.Failed;
}

async function runMover(work: (log: Logger, signal: AbortSignal) => Promise<MoverResult>): Promise<void> {
  const { signal } = commandContext();
  const log = createLogger({ name: 'mover', level: process.env.LOG_LEVEL ?? 'info' });
  let code: number = MoverExitCode.Ok;
  try {
    const result = await work(log, signal);
    await writeTerminationMessage(result, process.env);
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } catch (err) {
    const failure = describeFailure(err);
    code = moverExitCode(err);
    log.error({ err: isAppError(err) ? { code: err.code, message: err.message, hint: err.hint } : failure.line, exitCode: code }, 'mover failed');
    process.stderr.write(`${failure.line}\n`);
    // A failed Job's termination message is the reason the controller shows in the run's status.
    const reason = isAppError(err)
      ? { code: err.code, message: err.message, ...(err.hint ? { hint: err.hint } : {}), retryable: err.retryable }
      : { code: ErrorCode.Internal, message: failure.line, retryable: false };
    await writeTerminationMessage({ kind: 'failure', ...reason, exitCode: code }, process.env).catch(() => undefined);
  }
  // The Job's outcome is the exit code; nothing else may keep the process alive (timers, sockets).
  process.exit(code);
}

export function registerMoverCommand(program: Command): void {
  const mover = program.command('mover').description('what runs inside the operator\'s export Jobs (request in env SENDENSE_MOVER_REQUEST)');
  mover
    .command('disk')
    .description('copy one disk of a run into the staging folder of its restore point')
    .action(() =>
      runMover(async (log, signal) => {
        const request = parseMoverRequest('disk', process.env);
        const prism = prismFromEnv(request.prism, process.env, log);
        try {
          return await runDiskJob(request, { prism, status: kubeRunStatusWriter(request.run), log, signal });
        } finally {
          await prism.close();
        }
      }),
    );
  mover
    .command('commit')
    .description('commit the restore point of a run whose disks are all copied; apply retention')
    .action(() =>
      runMover(async (log, signal) => {
        const request = parseMoverRequest('commit', process.env);
        const prism = prismFromEnv(request.prism, process.env, log);
        try {
          return await runCommitJob(request, { prism, status: kubeRunStatusWriter(request.run), log, signal });
        } finally {
          await prism.close();
        }
      }),
    );
  mover
    .command('cleanup')
    .description("remove a failed attempt's staging folder")
    .action(() => runMover(async (log) => runCleanupJob(parseMoverRequest('cleanup', process.env), { log })));
}
