/**
 * Shared CLI plumbing: the commander program, a cancellation signal wired to SIGINT/SIGTERM, the CLI logger, and
 * turning any failure into ONE line on stderr plus an exit code that says what kind of failure it was.
 */
import { Command, CommanderError } from 'commander';
import { ErrorCode, isAppError } from '../lib/errors.ts';
import { type Logger, createLogger } from '../lib/log.ts';

export const programName = 'sendense-nutanix';

/** Exit codes: 2 bad input, 3 credentials or permission, 4 Prism unreachable/untrusted/unavailable, 5 not found, 1 other. */
export const exitCodes: Partial<Record<ErrorCode, number>> = {
  [ErrorCode.InvalidInput]: 2,
  [ErrorCode.Unauthenticated]: 3,
  [ErrorCode.Forbidden]: 3,
  [ErrorCode.Unreachable]: 4,
  [ErrorCode.TlsUntrusted]: 4,
  [ErrorCode.Unavailable]: 4,
  [ErrorCode.RateLimited]: 4,
  [ErrorCode.Timeout]: 4,
  [ErrorCode.NotFound]: 5,
  [ErrorCode.Aborted]: 130,
};

export function createProgram(): Command {
  return new Command(programName)
    .description('Back up Nutanix AHV virtual machines into verified QCOW2 restore points')
    .showHelpAfterError(false)
    .exitOverride();
}

/** What every command action gets: a logger on stderr and a signal that fires on Ctrl-C / SIGTERM. */
export interface CommandContext {
  log: Logger;
  signal: AbortSignal;
}

export function commandContext(): CommandContext {
  const controller = new AbortController();
  const stop = (name: string) => controller.abort(new Error(`interrupted by ${name}`));
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
  // Quiet by default: stdout carries the result, stderr only warnings and the error line. LOG_LEVEL overrides.
  return { log: createLogger({ level: process.env.LOG_LEVEL ?? 'warn' }), signal: controller.signal };
}

/** The one stderr line and exit code for a failure. */
export function describeFailure(err: unknown): { line: string; exitCode: number } {
  // Prism messages may span lines; the terminal gets one.
  const flat = (text: string) => text.replace(/\s*\n\s*/g, ' ');
  if (isAppError(err)) return { line: `${programName}: ${flat(err.oneLine())}`, exitCode: exitCodes[err.code] ?? 1 };
  const message = err instanceof Error ? err.message : String(err);
  return { line: `${programName}: internal error: ${flat(message)} (set LOG_LEVEL=debug and report it)`, exitCode: 1 };
}

/** Parses argv, runs the chosen command, and returns the process exit code. Never throws. */
export async function runProgram(program: Command, argv: string[]): Promise<number> {
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander already printed its message (or the help/version text).
      return err.exitCode === 0 ? 0 : 2;
    }
    const failure = describeFailure(err);
    if (!isAppError(err) && err instanceof Error) createLogger({ level: process.env.LOG_LEVEL ?? 'warn' }).debug({ stack: err.stack }, 'internal error');
    process.stderr.write(`${failure.line}\n`);
    return failure.exitCode;
  }
}

