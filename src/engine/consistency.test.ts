import { describe, expect, it } from 'vitest';
import { Consistency, type NgtStatus } from '../prism/types.ts';
import { judgeObtained, planConsistency } from './consistency.ts';

const capable: NgtStatus = { installed: true, enabled: true, reachable: true, vssSnapshotCapable: true };
const unreachable: NgtStatus = { ...capable, reachable: false };

describe('planConsistency', () => {
  it('asks for application consistency when NGT can quiesce', () => {
    expect(planConsistency('auto', 'vm1', capable)).toEqual({ request: Consistency.Application });
    expect(planConsistency('application', 'vm1', capable)).toEqual({ request: Consistency.Application });
  });
  it('auto downgrades visibly when NGT cannot quiesce', () => {
    expect(planConsistency('auto', 'vm1', unreachable)).toEqual({
      request: Consistency.Crash,
      downgradeReason: 'Nutanix Guest Tools are not reachable from the CVM',
    });
  });
  it('application refuses instead of downgrading', () => {
    expect(() => planConsistency('application', 'vm1', { ...capable, installed: false })).toThrow(/not installed/);
  });
  it('crash never asks NGT', () => {
    expect(planConsistency('crash', 'vm1', capable)).toEqual({ request: Consistency.Crash });
  });
});

describe('judgeObtained', () => {
  const appPlan = { request: Consistency.Application };
  it('accepts what was asked', () => {
    expect(judgeObtained('auto', appPlan, Consistency.Application, 'vm1')).toEqual({ obtained: Consistency.Application });
  });
  it('records a silent downgrade under auto', () => {
    expect(judgeObtained('auto', appPlan, Consistency.Crash, 'vm1').downgradeReason).toMatch(/crash-consistent/);
  });
  it('fails a silent downgrade under application', () => {
    expect(() => judgeObtained('application', appPlan, Consistency.Crash, 'vm1')).toThrow(/application consistency was requested/);
  });
});
