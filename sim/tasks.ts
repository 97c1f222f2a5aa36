/** Asynchronous tasks (ergon): each create/delete returns a task that the client polls (v3 and v4 views). */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { FaultSet } from './faults.ts';
import { TaskStatus, type SimState, type Task } from './state.ts';

/** A failure the task reports (code + message), as opposed to a simulator bug. */
export class TaskFailure extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

export interface TaskOutcome {
  completionDetails?: Task['completionDetails'];
  entities?: Task['entities'];
}

/**
 * How long a task stays RUNNING before its work runs (the work itself, e.g. a snapshot's hard links or tgtadm
 * calls, takes what it takes on top): `defaultMs` for every operation not named in `byOperation`.
 */
export interface TaskDurations {
  defaultMs: number;
  byOperation: Record<string, number>;
}

/**
 * `--task-duration`: one duration for every task (`0ms`, `2s`), or `Operation=duration` pairs with an optional
 * `default=duration`, e.g. `default=500ms,CreateRecoveryPoint=3s,vm_snapshot_create=3s`.
 */
export function parseTaskDurations(text: string, parseDuration: (text: string, field: string) => number): TaskDurations {
  const field = '--task-duration';
  if (!text.includes('=')) return { defaultMs: parseDuration(text, field), byOperation: {} };
  const durations: TaskDurations = { defaultMs: 0, byOperation: {} };
  for (const pair of text.split(',')) {
    const [operation, duration, extra] = pair.split('=').map((part) => part.trim());
    if (!operation || duration === undefined || extra !== undefined) {
      throw new Error(`${field}: "${pair}" is not Operation=duration (e.g. CreateRecoveryPoint=3s, default=500ms)`);
    }
    const ms = parseDuration(duration, `${field} ${operation}`);
    if (operation === 'default') durations.defaultMs = ms;
    else durations.byOperation[operation] = ms;
  }
  return durations;
}

export function isTerminal(status: TaskStatus): boolean {
  return status === TaskStatus.Succeeded || status === TaskStatus.Failed || status === TaskStatus.Canceled;
}

function now(): string {
  return new Date().toISOString();
}

export class TaskEngine {
  private readonly events = new EventEmitter();
  /** Tasks still waiting (duration or injected hang): cancel resolves them as CANCELED. */
  private readonly cancelers = new Map<string, () => void>();
  private readonly endHooks = new Map<string, (task: Task) => void>();
  private readonly state: SimState;
  private readonly faults: FaultSet;
  private readonly durations: TaskDurations;
  private readonly changed: () => void;

  constructor(state: SimState, faults: FaultSet, durations: TaskDurations, changed: () => void) {
    this.state = state;
    this.faults = faults;
    this.durations = durations;
    this.changed = changed;
    this.events.setMaxListeners(0);
    // Work that was in flight when a previous simulator process stopped cannot resume.
    for (const task of state.tasks) {
      if (!isTerminal(task.status)) this.finish(task, TaskStatus.Failed, { code: 'INTERNAL_ERROR', message: 'Interrupted by a simulator restart' });
    }
  }

  get(uuid: string): Task | undefined {
    return this.state.tasks.find((t) => t.uuid === uuid);
  }

  isCancelable(task: Task): boolean {
    return this.cancelers.has(task.uuid);
  }

  unfinished(): number {
    return this.state.tasks.filter((t) => !isTerminal(t.status)).length;
  }

  /** Creates a QUEUED task; it runs `work` after --task-duration unless a fault makes it fail or hang. */
  start(
    operation: string,
    clusterUuid: string,
    entities: Task['entities'],
    work: (task: Task) => Promise<TaskOutcome>,
    onEnd?: (task: Task) => void,
  ): Task {
    const created = now();
    const task: Task = {
      uuid: randomUUID(),
      operation,
      status: TaskStatus.Queued,
      progress: 0,
      createdAt: created,
      updatedAt: created,
      logicalTimestamp: 1,
      clusterUuid,
      entities,
      completionDetails: [],
    };
    this.state.tasks.push(task);
    if (onEnd) this.endHooks.set(task.uuid, onEnd);
    this.changed();
    setImmediate(() => void this.run(task, work));
    return task;
  }

  private update(task: Task, patch: Partial<Task>): void {
    Object.assign(task, patch, { updatedAt: now(), logicalTimestamp: task.logicalTimestamp + 1 });
    this.changed();
    this.events.emit('update', task.uuid);
  }

  private finish(task: Task, status: TaskStatus, error?: Task['error']): void {
    this.update(task, { status, progress: status === TaskStatus.Succeeded ? 100 : task.progress, completedAt: now(), error });
    const hook = this.endHooks.get(task.uuid);
    this.endHooks.delete(task.uuid);
    hook?.(task);
  }

  private wait(task: Task, ms: number | undefined): Promise<boolean> {
    return new Promise((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(() => {
        this.cancelers.delete(task.uuid);
        resolve(true);
      }, ms);
      this.cancelers.set(task.uuid, () => {
        if (timer) clearTimeout(timer);
        this.cancelers.delete(task.uuid);
        resolve(false);
      });
    });
  }

  private async run(task: Task, work: (task: Task) => Promise<TaskOutcome>): Promise<void> {
    this.update(task, { status: TaskStatus.Running, startedAt: now(), progress: 10 });
    const fault = this.faults.taskFault(task.operation);
    const proceed = await this.wait(task, fault?.kind === 'hang' ? undefined : (this.durations.byOperation[task.operation] ?? this.durations.defaultMs));
    if (!proceed) {
      this.finish(task, TaskStatus.Canceled);
      return;
    }
    if (fault?.kind === 'fail') {
      this.finish(task, TaskStatus.Failed, { code: 'INTERNAL_ERROR', message: fault.message });
      return;
    }
    try {
      const outcome = await work(task);
      if (outcome.entities) task.entities = [...task.entities, ...outcome.entities];
      task.completionDetails = outcome.completionDetails ?? [];
      this.finish(task, TaskStatus.Succeeded);
    } catch (err) {
      const failure = err instanceof TaskFailure ? err : new TaskFailure('INTERNAL_ERROR', err instanceof Error ? err.message : String(err));
      this.finish(task, TaskStatus.Failed, { code: failure.code, message: failure.message });
    }
  }

  /** `ok` when the task was waiting and is now CANCELED. */
  cancel(uuid: string): 'ok' | 'not-found' | 'not-cancelable' {
    const task = this.get(uuid);
    if (!task) return 'not-found';
    const cancel = this.cancelers.get(uuid);
    if (!cancel) return 'not-cancelable';
    cancel();
    return 'ok';
  }

  /** Resolves when any of the tasks is terminal (true) or after timeoutMs (false). */
  async waitForAny(uuids: string[], timeoutMs: number, signal: AbortSignal): Promise<boolean> {
    const done = (): boolean => uuids.some((u) => {
      const task = this.get(u);
      return task !== undefined && isTerminal(task.status);
    });
    if (done() || timeoutMs <= 0) return done();
    return new Promise((resolve) => {
      const finish = (value: boolean): void => {
        clearTimeout(timer);
        this.events.off('update', onUpdate);
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      };
      const onUpdate = (): void => {
        if (done()) finish(true);
      };
      const onAbort = (): void => finish(false);
      const timer = setTimeout(() => finish(false), timeoutMs);
      this.events.on('update', onUpdate);
      signal.addEventListener('abort', onAbort);
    });
  }

  /** Stops waiting tasks (at shutdown) so no timer keeps the process alive. */
  cancelAll(): void {
    for (const cancel of [...this.cancelers.values()]) cancel();
  }
}
