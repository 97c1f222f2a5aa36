/**
 * Typed errors shared by every layer. Each says whether retrying the same call can help (`retryable`) and,
 * where one exists, what the user should do (`hint`), so callers decide on retries without parsing messages.
 */
export const ErrorCode = {
  InvalidInput: 'INVALID_INPUT',
  Unreachable: 'UNREACHABLE',
  TlsUntrusted: 'TLS_UNTRUSTED',
  Unauthenticated: 'UNAUTHENTICATED',
  Forbidden: 'FORBIDDEN',
  NotFound: 'NOT_FOUND',
  Conflict: 'CONFLICT',
  RateLimited: 'RATE_LIMITED',
  Unavailable: 'UNAVAILABLE',
  Timeout: 'TIMEOUT',
  Aborted: 'ABORTED',
  TaskFailed: 'TASK_FAILED',
  BadResponse: 'BAD_RESPONSE',
  Unsupported: 'UNSUPPORTED',
  DataPath: 'DATA_PATH',
  Repository: 'REPOSITORY',
  NoSpace: 'NO_SPACE',
  Integrity: 'INTEGRITY',
  Internal: 'INTERNAL',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface AppErrorOptions {
  retryable?: boolean;
  hint?: string;
  cause?: unknown;
  /** Milliseconds the server asked us to wait before retrying (Retry-After, X-Ratelimit-Reset). */
  retryAfterMs?: number;
}

export class AppError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly hint: string | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(code: ErrorCode, message: string, options: AppErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AppError';
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.hint = options.hint;
    this.retryAfterMs = options.retryAfterMs;
  }

  /** One line for a terminal: what went wrong and how to fix it. */
  oneLine(): string {
    return this.hint ? `${this.message} (${this.hint})` : this.message;
  }
}

export function isAppError(err: unknown): err is AppError {
  return err instanceof AppError;
}

/** Abort as a typed error; never retryable, since the caller asked to stop. */
export function abortError(signal: AbortSignal | undefined, what: string): AppError {
  const reason = signal?.reason instanceof Error ? signal.reason.message : 'aborted';
  return new AppError(ErrorCode.Aborted, `${what}: ${reason}`, { cause: signal?.reason });
}

export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw abortError(signal, what);
}
