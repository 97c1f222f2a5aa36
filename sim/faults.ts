/** Fault injection rules, set with `--faults JSON` at start or through `/_sim/faults` at run time. */
import { z } from 'zod';

export const faultRuleSchema = z.object({
  kind: z.enum(['rateLimit', 'unavailable', 'latency', 'drop', 'taskFail', 'taskHang']),
  match: z
    .object({
      method: z.string().optional(),
      /** Regular expression tested against the request path (HTTP faults) or the task operation (task faults). */
      path: z.string().optional(),
    })
    .optional(),
  /** How many times the rule fires; absent = until removed. */
  count: z.number().int().positive().optional(),
  ms: z.number().int().nonnegative().optional(),
  retryAfterSeconds: z.number().int().nonnegative().optional(),
  message: z.string().optional(),
});
export type FaultRule = z.infer<typeof faultRuleSchema>;
export const faultRulesSchema = z.array(faultRuleSchema);

interface ActiveRule {
  id: number;
  rule: FaultRule;
  remaining: number | undefined;
  pattern: RegExp | undefined;
}

export type HttpFault =
  | { kind: 'rateLimit'; retryAfterSeconds: number }
  | { kind: 'unavailable' }
  | { kind: 'drop' };

export class FaultSet {
  private rules: ActiveRule[] = [];
  private nextId = 1;

  add(rules: FaultRule[]): number[] {
    return rules.map((rule) => {
      const id = this.nextId++;
      this.rules.push({ id, rule, remaining: rule.count, pattern: rule.match?.path ? new RegExp(rule.match.path) : undefined });
      return id;
    });
  }

  clear(): void {
    this.rules = [];
  }

  list(): Array<FaultRule & { id: number; remaining?: number }> {
    return this.rules.map((r) => ({ ...r.rule, id: r.id, remaining: r.remaining }));
  }

  private take(active: ActiveRule): void {
    if (active.remaining === undefined) return;
    active.remaining -= 1;
    if (active.remaining <= 0) this.rules = this.rules.filter((r) => r !== active);
  }

  private find(kinds: FaultRule['kind'][], subject: string, method?: string): ActiveRule | undefined {
    return this.rules.find(
      (r) =>
        kinds.includes(r.rule.kind) &&
        (r.pattern === undefined || r.pattern.test(subject)) &&
        (method === undefined || r.rule.match?.method === undefined || r.rule.match.method.toUpperCase() === method),
    );
  }

  /** Added latency for this request (all matching latency rules add up). */
  latencyMs(method: string, path: string): number {
    let total = 0;
    for (const active of [...this.rules]) {
      if (active.rule.kind !== 'latency') continue;
      if (active.pattern && !active.pattern.test(path)) continue;
      if (active.rule.match?.method && active.rule.match.method.toUpperCase() !== method) continue;
      total += active.rule.ms ?? 0;
      this.take(active);
    }
    return total;
  }

  /** The first matching terminating fault, consumed. */
  httpFault(method: string, path: string): HttpFault | undefined {
    const active = this.find(['rateLimit', 'unavailable', 'drop'], path, method);
    if (!active) return undefined;
    this.take(active);
    if (active.rule.kind === 'rateLimit') return { kind: 'rateLimit', retryAfterSeconds: active.rule.retryAfterSeconds ?? 1 };
    if (active.rule.kind === 'unavailable') return { kind: 'unavailable' };
    return { kind: 'drop' };
  }

  /** What happens to a new task with this operation name. */
  taskFault(operation: string): { kind: 'fail'; message: string } | { kind: 'hang' } | undefined {
    const active = this.find(['taskFail', 'taskHang'], operation);
    if (!active) return undefined;
    this.take(active);
    if (active.rule.kind === 'taskHang') return { kind: 'hang' };
    return { kind: 'fail', message: active.rule.message ?? `Injected failure of ${operation}` };
  }
}
