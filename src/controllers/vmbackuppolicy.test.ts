/** The policy controller's decisions: schedule math, selection, run names, full cadence, run history. */
import { describe, expect, it } from 'vitest';
import { groupVersion } from '../crds/common.ts';
import { vmBackupPolicySpec } from '../crds/vm-backup-policy.ts';
import { vmBackupRun, type RunPhase, type VMBackupRun } from '../crds/vm-backup-run.ts';
import type { Vm } from '../prism/types.ts';
import {
  decideSchedule,
  globToRegExp,
  handledUntil,
  parseSchedule,
  recordSuccesses,
  runName,
  runsBeyondHistory,
  runTypeFor,
  selectVms,
  vmUuidLabel,
} from './vmbackuppolicy.ts';

const at = (iso: string): Date => new Date(iso);
const hour = 3_600_000;

function cronOf(schedule: string, timeZone?: string) {
  const parsed = parseSchedule(schedule, timeZone);
  if ('problem' in parsed) throw new Error(parsed.problem.message);
  return parsed.cron;
}

describe('parseSchedule', () => {
  it('names the field and the fix for a bad cron or time zone', () => {
    const badCron = parseSchedule('61 * * * *', undefined);
    expect('problem' in badCron && badCron.problem).toMatchObject({ reason: 'InvalidSchedule', message: expect.stringMatching(/^spec\.schedule: "61 \* \* \* \*".*minute.*five fields/) });
    const badZone = parseSchedule('0 1 * * *', 'Mars/Olympus');
    expect('problem' in badZone && badZone.problem).toMatchObject({ reason: 'InvalidTimeZone', message: expect.stringMatching(/^spec\.timeZone: "Mars\/Olympus".*IANA/) });
    expect('cron' in parseSchedule('*/5 * * * * *', 'Europe/Berlin')).toBe(true);
    expect('cron' in parseSchedule('@daily', undefined)).toBe(true);
  });
});

describe('decideSchedule', () => {
  const hourly = cronOf('0 * * * *');
  const base = { cron: hourly, startingDeadlineMs: hour, suspend: false, resuming: false };

  it('waits between ticks and names the next one', () => {
    const d = decideSchedule({ ...base, now: at('2026-11-26T10:30:00Z'), handledUntil: at('2026-11-26T10:00:00Z') });
    expect(d).toEqual({ action: 'wait', next: at('2026-11-26T11:00:00Z') });
  });

  it('runs a tick that is due, including exactly at the tick', () => {
    const d = decideSchedule({ ...base, now: at('2026-11-26T11:00:00Z'), handledUntil: at('2026-11-26T10:00:00Z') });
    expect(d).toEqual({ action: 'run', tick: at('2026-11-26T11:00:00Z'), missed: 0, next: at('2026-11-26T12:00:00Z') });
  });

  it('after downtime runs only the newest missed tick and counts the others', () => {
    const d = decideSchedule({ ...base, now: at('2026-11-26T15:20:00Z'), handledUntil: at('2026-11-26T10:00:00Z') });
    expect(d).toEqual({ action: 'run', tick: at('2026-11-26T15:00:00Z'), missed: 4, next: at('2026-11-26T16:00:00Z') });
  });

  it('skips the newest missed tick when it is beyond the starting deadline', () => {
    const d = decideSchedule({ ...base, startingDeadlineMs: 10 * 60_000, now: at('2026-11-26T15:20:00Z'), handledUntil: at('2026-11-26T10:00:00Z') });
    expect(d).toMatchObject({ action: 'skip', reason: 'MissedStartingDeadline', tick: at('2026-11-26T15:00:00Z'), missed: 4 });
  });

  it('while suspended records the tick as skipped, so un-suspending does not run it', () => {
    const suspended = decideSchedule({ ...base, suspend: true, now: at('2026-11-26T11:00:30Z'), handledUntil: at('2026-11-26T10:00:00Z') });
    expect(suspended).toMatchObject({ action: 'skip', reason: 'Suspended', tick: at('2026-11-26T11:00:00Z') });
    const status = { lastScheduleTime: '2026-11-26T10:00:00Z', lastSkippedSchedule: { scheduleTime: '2026-11-26T11:00:00Z', reason: 'Suspended' as const, message: '' } };
    const resumed = decideSchedule({ ...base, now: at('2026-11-26T11:10:00Z'), handledUntil: handledUntil(status, at('2026-11-01T00:00:00Z')) });
    expect(resumed).toEqual({ action: 'wait', next: at('2026-11-26T12:00:00Z') });
  });

  it('the first reconcile after un-suspending skips a tick no suspended reconcile recorded (operator down, or a retry)', () => {
    const d = decideSchedule({ ...base, resuming: true, now: at('2026-11-26T12:00:02Z'), handledUntil: at('2026-11-26T10:00:00Z') });
    expect(d).toMatchObject({ action: 'skip', reason: 'Suspended', tick: at('2026-11-26T12:00:00Z'), missed: 1 });
    expect(decideSchedule({ ...base, resuming: true, now: at('2026-11-26T12:30:00Z'), handledUntil: at('2026-11-26T12:00:00Z') }).action).toBe('wait');
  });

  it('a new policy starts at its creation, without catching up earlier ticks', () => {
    const created = at('2026-11-26T10:59:00Z');
    expect(decideSchedule({ ...base, now: at('2026-11-26T10:59:01Z'), handledUntil: handledUntil(undefined, created) }).action).toBe('wait');
    expect(decideSchedule({ ...base, now: at('2026-11-26T11:00:01Z'), handledUntil: handledUntil(undefined, created) })).toMatchObject({ action: 'run', missed: 0 });
  });

  it('follows the time zone, including a DST change', () => {
    const berlin = cronOf('30 1 * * *', 'Europe/Berlin');
    // 01:30 in Berlin is 00:30 UTC in winter (CET) and 23:30 UTC the day before in summer (CEST).
    expect(decideSchedule({ ...base, cron: berlin, now: at('2026-11-26T00:31:00Z'), handledUntil: at('2026-11-25T12:00:00Z') })).toMatchObject({ action: 'run', tick: at('2026-11-26T00:30:00Z') });
    expect(decideSchedule({ ...base, cron: berlin, now: at('2026-07-01T23:31:00Z'), handledUntil: at('2026-07-01T12:00:00Z') })).toMatchObject({ action: 'run', tick: at('2026-07-01T23:30:00Z') });
    // The night of 2026-03-29 clocks jump 02:00 → 03:00 CEST; 01:30 CET exists (00:30 UTC).
    expect(decideSchedule({ ...base, cron: berlin, now: at('2026-03-29T00:31:00Z'), handledUntil: at('2026-03-28T12:00:00Z') })).toMatchObject({ tick: at('2026-03-29T00:30:00Z') });
  });

  it('handles seconds-level crons (used by the e2e tests)', () => {
    const every5s = cronOf('*/5 * * * * *');
    expect(decideSchedule({ ...base, cron: every5s, now: at('2026-11-26T10:00:07Z'), handledUntil: at('2026-11-26T10:00:00Z') })).toEqual({
      action: 'run',
      tick: at('2026-11-26T10:00:05Z'),
      missed: 0,
      next: at('2026-11-26T10:00:10Z'),
    });
  });
});

function vm(name: string, uuid: string, categories: Record<string, string> = {}): Vm {
  return { uuid, name, cluster: { uuid: 'c1' }, powerState: 'ON', ngt: { installed: false, enabled: false, reachable: false, vssSnapshotCapable: false }, categories, disks: [], nics: [] };
}

describe('selectVms', () => {
  const vms = [
    vm('db-01', '00000000-0000-4000-8000-000000000001', { Environment: 'Production', AppType: 'db' }),
    vm('db-02', '00000000-0000-4000-8000-000000000002', { Environment: 'Dev', AppType: 'db' }),
    vm('web-01', '00000000-0000-4000-8000-000000000003', { Environment: 'Production', AppType: 'web' }),
    vm('web.1', '00000000-0000-4000-8000-000000000004', {}),
  ];
  const selector = (s: object) => vmBackupPolicySpec.shape.selector.parse(s);
  const names = (s: object) => selectVms(vms, selector(s)).vms.map((v) => v.name);

  it('globs the whole name; dots and other regex characters are literal', () => {
    expect(names({ namePattern: 'db-*' })).toEqual(['db-01', 'db-02']);
    expect(names({ namePattern: 'web?1' })).toEqual(['web.1']);
    expect(names({ namePattern: 'web.1' })).toEqual(['web.1']);
    expect(names({ namePattern: '*-0[!1]' })).toEqual(['db-02']);
    expect(globToRegExp('db').test('db-01')).toBe(false);
  });

  it('categories: every key listed must match one of its values', () => {
    expect(names({ categories: { Environment: ['Production'] } })).toEqual(['db-01', 'web-01']);
    expect(names({ categories: { Environment: ['Production'], AppType: ['db'] } })).toEqual(['db-01']);
    expect(names({ categories: { Environment: ['Production', 'Dev'], AppType: ['db'] } })).toEqual(['db-01', 'db-02']);
  });

  it('unions the criteria, removes excludes and names each missing VM by its field', () => {
    const result = selectVms(
      vms,
      selector({ vmNames: ['web-01', 'gone', 'db-01'], vmUUIDs: ['00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-0000000000ff'], exclude: { vmNames: ['db-01'] } }),
    );
    expect(result.vms.map((v) => v.name)).toEqual(['db-02', 'web-01']);
    expect(result.missing).toEqual(['spec.selector.vmNames[1]: gone', 'spec.selector.vmUUIDs[1]: 00000000-0000-4000-8000-0000000000ff']);
  });
});

describe('runs', () => {
  it('names are deterministic, unique per VM and tick, and at most 63 characters', () => {
    const tick = at('2026-11-26T10:00:00Z');
    expect(runName('nightly', 'AB12CD34-0000-4000-8000-000000000001', tick)).toBe('nightly-ab12cd34-1795687200');
    const long = 'a'.repeat(80);
    const name = runName(long, 'ab12cd34-0000-4000-8000-000000000001', tick);
    expect(name.length).toBeLessThanOrEqual(63);
    expect(name).not.toBe(runName(`${'a'.repeat(79)}b`, 'ab12cd34-0000-4000-8000-000000000001', tick));
    expect(runName('nightly', 'ab12cd34-0000-4000-8000-000000000001', at('2026-11-26T11:00:00Z'))).not.toBe(runName('nightly', 'ab12cd34-0000-4000-8000-000000000001', tick));
  });

  const run = (name: string, uuid: string, phase: RunPhase | undefined, completionTime?: string, backupType?: 'Full' | 'Incremental'): VMBackupRun =>
    vmBackupRun.parse({
      apiVersion: groupVersion,
      kind: 'VMBackupRun',
      metadata: { name, namespace: 'ns', labels: { [vmUuidLabel]: uuid }, creationTimestamp: completionTime ?? '2026-11-26T00:00:00Z' },
      spec: { policyRef: { name: 'p' }, vm: { uuid } },
      ...(phase ? { status: { phase, ...(completionTime ? { completionTime } : {}), ...(backupType ? { backupType, pointId: `20261126T000000Z-${name.slice(-6).padStart(6, '0')}` } : {}) } } : {}),
    });
  const uuidA = '00000000-0000-4000-8000-00000000000a';
  const uuidB = '00000000-0000-4000-8000-00000000000b';
  const fullBackup = { everyDays: 7 };

  it('full cadence: a full first, then incrementals until everyDays or everyRuns', () => {
    const now = at('2026-11-26T12:00:00Z');
    expect(runTypeFor(undefined, fullBackup, now)).toBe('full');
    const afterFull = recordSuccesses([], [run('r1', uuidA, 'Succeeded', '2026-11-26T10:00:00Z', 'Full')]);
    expect(runTypeFor(afterFull[0], fullBackup, now)).toBe('auto');
    expect(runTypeFor(afterFull[0], fullBackup, at('2026-12-03T10:00:00Z'))).toBe('full');
    const afterTwo = recordSuccesses(afterFull, [run('r2', uuidA, 'Succeeded', '2026-11-26T11:00:00Z', 'Incremental'), run('r3', uuidA, 'Succeeded', '2026-11-26T11:30:00Z', 'Incremental')]);
    expect(afterTwo[0]).toMatchObject({ runName: 'r3', lastFullTime: '2026-11-26T10:00:00Z', incrementalsSinceFull: 2, backupType: 'Incremental' });
    expect(runTypeFor(afterTwo[0], { everyDays: 7, everyRuns: 4 }, now)).toBe('auto');
    expect(runTypeFor(afterTwo[0], { everyDays: 7, everyRuns: 3 }, now)).toBe('full');
  });

  it('records each success once, per VM, ignoring failures and older runs', () => {
    const first = recordSuccesses([], [run('a1', uuidA, 'Succeeded', '2026-11-26T10:00:00Z', 'Full'), run('b1', uuidB, 'Failed', '2026-11-26T10:00:00Z')]);
    expect(first).toHaveLength(1);
    const again = recordSuccesses(first, [run('a1', uuidA, 'Succeeded', '2026-11-26T10:00:00Z', 'Full'), run('a0', uuidA, 'Succeeded', '2026-11-26T09:00:00Z', 'Incremental')]);
    expect(again).toEqual(first);
    expect(first[0]?.pointId).toMatch(/^20261126T000000Z-/);
  });

  it('history limits keep the newest finished runs per VM and outcome, never an active one', () => {
    const runs = [
      run('a-s1', uuidA, 'Succeeded', '2026-11-26T01:00:00Z'),
      run('a-s2', uuidA, 'Succeeded', '2026-11-26T02:00:00Z'),
      run('a-s3', uuidA, 'Succeeded', '2026-11-26T03:00:00Z'),
      run('a-f1', uuidA, 'Failed', '2026-11-26T01:30:00Z'),
      run('a-f2', uuidA, 'PartiallyFailed', '2026-11-26T02:30:00Z'),
      run('a-active', uuidA, 'Exporting'),
      run('a-new', uuidA, undefined),
      run('b-s1', uuidB, 'Succeeded', '2026-11-26T01:00:00Z'),
    ];
    const doomed = runsBeyondHistory(runs, { successful: 2, failed: 1 }).map((r) => r.metadata.name);
    expect(doomed.sort()).toEqual(['a-f1', 'a-s1']);
    // The newest success of each VM stays even at 0: its recovery point is the next incremental's base.
    expect(runsBeyondHistory(runs, { successful: 0, failed: 0 }).map((r) => r.metadata.name).sort()).toEqual(['a-f1', 'a-f2', 'a-s1', 'a-s2']);
  });
});
