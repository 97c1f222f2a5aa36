import { AppError, ErrorCode } from '../lib/errors.ts';
import { Consistency, type NgtStatus } from '../prism/types.ts';

/** What the user asked for: `auto` takes application consistency when the guest can quiesce, crash otherwise. */
export const ConsistencyMode = { Auto: 'auto', Application: 'application', Crash: 'crash' } as const;
export type ConsistencyMode = (typeof ConsistencyMode)[keyof typeof ConsistencyMode];

export interface ConsistencyPlan {
  request: Consistency;
  /** Why `auto` settled on crash consistency before asking Nutanix; undefined when nothing was downgraded. */
  downgradeReason?: string;
}

/** Why NGT cannot quiesce this guest, or undefined when it can. */
export function ngtBlocker(ngt: NgtStatus): string | undefined {
  if (!ngt.installed) return 'Nutanix Guest Tools are not installed';
  if (!ngt.enabled) return 'Nutanix Guest Tools are disabled';
  if (!ngt.reachable) return 'Nutanix Guest Tools are not reachable from the CVM';
  if (!ngt.vssSnapshotCapable) return 'Nutanix Guest Tools cannot take VSS / quiesced snapshots on this guest';
  return undefined;
}

export function planConsistency(mode: ConsistencyMode, vmName: string, ngt: NgtStatus): ConsistencyPlan {
  if (mode === ConsistencyMode.Crash) return { request: Consistency.Crash };
  const blocker = ngtBlocker(ngt);
  if (blocker === undefined) return { request: Consistency.Application };
  if (mode === ConsistencyMode.Application) {
    throw new AppError(ErrorCode.InvalidInput, `VM ${vmName}: application-consistent backup impossible: ${blocker}`, {
      hint: 'install and enable NGT with VSS in the guest, or use --consistency auto|crash',
    });
  }
  return { request: Consistency.Crash, downgradeReason: blocker };
}

export interface ObtainedConsistency {
  obtained: Consistency;
  downgradeReason?: string;
}

/**
 * Nutanix may silently produce a crash-consistent point when asked for an application-consistent one; the point's
 * real type is read back and judged here. `application` refuses the downgrade, `auto` records it.
 */
export function judgeObtained(mode: ConsistencyMode, plan: ConsistencyPlan, obtained: Consistency, vmName: string): ObtainedConsistency {
  if (plan.request === Consistency.Application && obtained !== Consistency.Application) {
    const reason = 'Nutanix created a crash-consistent recovery point although application consistency was requested (guest quiesce failed)';
    if (mode === ConsistencyMode.Application) {
      throw new AppError(ErrorCode.TaskFailed, `VM ${vmName}: ${reason}`, {
        hint: 'check NGT and VSS in the guest, or use --consistency auto to accept crash consistency',
      });
    }
    return { obtained, downgradeReason: reason };
  }
  return plan.downgradeReason === undefined ? { obtained } : { obtained, downgradeReason: plan.downgradeReason };
}
