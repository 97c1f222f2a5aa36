import { describe, expect, it } from 'vitest';
import { condition } from '../crds/common.ts';
import { setCondition } from './conditions.ts';

describe('setCondition', () => {
  const t0 = new Date('2026-01-01T00:00:00.123Z');
  const t1 = new Date('2026-01-01T00:05:00Z');

  it('keeps lastTransitionTime while the status stays, and moves it on a flip', () => {
    const first = setCondition(undefined, { type: 'Ready', status: 'False', reason: 'SecretNotFound', message: 'create it' }, 1, t0);
    expect(first).toEqual([{ type: 'Ready', status: 'False', reason: 'SecretNotFound', message: 'create it', lastTransitionTime: '2026-01-01T00:00:00Z', observedGeneration: 1 }]);
    const sameStatus = setCondition(first, { type: 'Ready', status: 'False', reason: 'Unauthenticated', message: 'fix the password' }, 2, t1);
    expect(sameStatus[0]).toMatchObject({ reason: 'Unauthenticated', lastTransitionTime: '2026-01-01T00:00:00Z', observedGeneration: 2 });
    const flipped = setCondition(sameStatus, { type: 'Ready', status: 'True', reason: 'Discovered', message: '4 VMs' }, 2, t1);
    expect(flipped[0]?.lastTransitionTime).toBe('2026-01-01T00:05:00Z');
  });

  it('keeps other condition types in place and writes what the CRD schema accepts', () => {
    let list = setCondition(undefined, { type: 'CredentialsValid', status: 'True', reason: 'Authenticated', message: '' }, 3, t0);
    list = setCondition(list, { type: 'Ready', status: 'Unknown', reason: 'NotChecked', message: '' }, 3, t0);
    list = setCondition(list, { type: 'CredentialsValid', status: 'False', reason: 'Unauthenticated', message: '' }, 3, t1);
    expect(list.map((c) => c.type)).toEqual(['CredentialsValid', 'Ready']);
    for (const c of list) expect(condition.safeParse(c).success).toBe(true);
  });
});
