/** Waits for Prism tasks (v3 `tasks/{uuid}`, v4 `prism/v4.0/config/tasks/{extId}`) with a deadline and cancellation. */
import { setTimeout as sleep } from 'node:timers/promises';
import { AppError, ErrorCode, abortError } from '../lib/errors.ts';
import type { PrismHttp } from './http.ts';
import { type V3Task, type V4Task, v3TaskPollRequestSchema, v3TaskPollResponseSchema, v4Envelope, v4TaskSchema } from './schemas.ts';

export interface TaskWaitOptions {
  /** Give up after this long; the task keeps running on Prism. */
  timeoutMs: number;
  /** Delay before the second poll (the first is immediate); doubles up to maxPollMs. */
  pollMs: number;
  maxPollMs: number;
}

/**
 * Adaptive polling: each wait is the time already waited plus pollMs (until the cap), so a task is seen at most
 * its own duration + 20 ms late: one that finishes in 30 ms (the simulator, a small volume-group change) costs
 * ~60 ms, and a 2-minute task on a real Prism Central costs 32 GETs, the delay being capped at 5 s (v3 uses a long poll instead).
 */
export const defaultTaskWait: TaskWaitOptions = { timeoutMs: 30 * 60_000, pollMs: 20, maxPollMs: 5_000 };

/** The waits between polls: pollMs, doubling up to maxPollMs. Also used for other "wait until ready" loops. */
export function* pollDelays(options: Pick<TaskWaitOptions, 'pollMs' | 'maxPollMs'>): Generator<number, never> {
  for (let delay = options.pollMs; ; delay = Math.min(options.maxPollMs, delay * 2)) yield delay;
}

/** The path form of an id as the v4 SDKs escape it: `ZXJnb24=:<uuid>` keeps its '=' and ':'. */
export function pathSegment(id: string): string {
  return encodeURIComponent(id).replaceAll('%3D', '=').replaceAll('%3A', ':');
}

/**
 * Polls until the task ends. `poll` gets the time left and says whether it waited itself (a long poll); between
 * polls that did not wait, the adaptive schedule sleeps.
 */
async function waitFor<T>(
  what: string,
  taskId: string,
  options: TaskWaitOptions,
  signal: AbortSignal | undefined,
  poll: (leftMs: number) => Promise<{ task: T; waited: boolean }>,
  verdict: (task: T) => 'done' | 'running' | AppError,
): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  const delays = pollDelays(options);
  for (;;) {
    const { task, waited } = await poll(deadline - Date.now());
    const state = verdict(task);
    if (state === 'done') return task;
    if (state !== 'running') throw state;
    const left = deadline - Date.now();
    if (left <= 0) {
      throw new AppError(ErrorCode.Timeout, `${what}: Prism task ${taskId} did not finish within ${Math.round(options.timeoutMs / 1000)} s`, {
        retryable: true,
        hint: 'check the task in Prism; raise the task timeout if the cluster is busy',
      });
    }
    if (waited) continue;
    try {
      await sleep(Math.min(delays.next().value, left), undefined, signal ? { signal } : undefined);
    } catch {
      throw abortError(signal, what);
    }
  }
}

/** Longest v3 long poll (the API allows 30 s), kept well inside the request timeout. */
function longPollSeconds(http: PrismHttp, leftMs: number): number {
  return Math.max(0, Math.min(30, Math.floor((http.requestTimeoutMs / 2) / 1000), Math.floor(leftMs / 1000)));
}

/**
 * v3 tasks are awaited with `POST tasks/poll`, which answers as soon as the task ends (or after up to 30 s): no
 * latency after the task's end and one request per 30 s. With under a second left, it only looks (0 s), and the
 * adaptive schedule sleeps between looks.
 */
export function waitForV3Task(http: PrismHttp, taskUuid: string, what: string, options: TaskWaitOptions, signal?: AbortSignal): Promise<V3Task> {
  return waitFor(
    what,
    taskUuid,
    options,
    signal,
    async (leftMs) => {
      const seconds = longPollSeconds(http, leftMs);
      const res = await http.request({
        method: 'POST',
        path: '/api/nutanix/v3/tasks/poll',
        body: v3TaskPollRequestSchema.parse({ task_uuid_list: [taskUuid], poll_timeout_seconds: seconds }),
        schema: v3TaskPollResponseSchema,
        // A read: it only waits.
        retrySafe: true,
        signal,
        what: `${what} (task ${taskUuid})`,
      });
      const task = res.data.entities?.find((t) => t.uuid === taskUuid) ?? res.data.entities?.[0];
      if (!task) throw new AppError(ErrorCode.BadResponse, `${what}: tasks/poll returned no entity for task ${taskUuid}`, { hint: 'report it with the Prism version' });
      return { task, waited: seconds > 0 };
    },
    (task) => {
      if (task.status === 'SUCCEEDED') return 'done';
      if (task.status === 'FAILED' || task.status === 'ABORTED') {
        const detail = [task.error_code, task.error_detail].filter(Boolean).join(': ') || task.progress_message || task.status;
        return new AppError(ErrorCode.TaskFailed, `${what}: Prism task ${taskUuid} ${task.status.toLowerCase()}: ${detail}`);
      }
      return 'running';
    },
  );
}

export function waitForV4Task(http: PrismHttp, taskExtId: string, what: string, options: TaskWaitOptions, signal?: AbortSignal): Promise<V4Task> {
  return waitFor(
    what,
    taskExtId,
    options,
    signal,
    // v4 has no long poll: the adaptive schedule it is.
    async () => ({
      task: (
        await http.request({
          method: 'GET',
          path: `/api/prism/v4.0/config/tasks/${pathSegment(taskExtId)}`,
          schema: v4Envelope(v4TaskSchema),
          retrySafe: true,
          signal,
          what: `${what} (task ${taskExtId})`,
        })
      ).data.data,
      waited: false,
    }),
    (task) => {
      if (task.status === 'SUCCEEDED') return 'done';
      if (task.status === 'FAILED' || task.status === 'CANCELED') {
        const messages = [...new Set((task.errorMessages ?? []).map((m) => m.message).filter((m): m is string => !!m))];
        const detail = messages.join('; ') || task.legacyErrorMessage || task.status;
        return new AppError(ErrorCode.TaskFailed, `${what}: Prism task ${taskExtId} ${task.status.toLowerCase()}: ${detail}`);
      }
      return 'running';
    },
  );
}

/** The v4 entity a finished task created: completion detail `detailName`, else the affected entity with relation `rel`. */
export function createdEntityId(task: V4Task, detailName: string, rel: string, what: string): string {
  const detail = task.completionDetails?.find((d) => d.name === detailName)?.value;
  if (typeof detail === 'string' && detail) return detail;
  const affected = task.entitiesAffected?.find((e) => e.rel === rel && e.extId);
  if (affected?.extId) return affected.extId;
  throw new AppError(ErrorCode.BadResponse, `${what}: task ${task.extId ?? '?'} succeeded but names no ${rel}`, {
    hint: 'the Prism version may be unsupported; report it with the Prism version',
  });
}
