import { describe, expect, it } from 'vitest';
import { moverInitiatorName, runControllerOptionsFromEnv } from './vmbackuprun.ts';

describe('runControllerOptionsFromEnv', () => {
  it('reads the chart’s mover settings and the deadlines', () => {
    const options = runControllerOptionsFromEnv({
      SENDENSE_MOVER_IMAGE: 'registry.example/sendense:1.2.3',
      SENDENSE_MOVER_IMAGE_PULL_POLICY: 'Always',
      SENDENSE_MOVER_RESOURCES: '{"limits":{"memory":"1Gi"}}',
      SENDENSE_MOVER_ACTIVE_DEADLINE_SECONDS: '86400',
      SENDENSE_MOVER_TTL_SECONDS_AFTER_FINISHED: '0',
      SENDENSE_MOVER_SERVICE_ACCOUNT: 'backup-mover',
      SENDENSE_RUN_DELETION_DEADLINE: '30s',
    });
    expect(options).toEqual({
      mover: { image: 'registry.example/sendense:1.2.3', imagePullPolicy: 'Always', resources: { limits: { memory: '1Gi' } }, activeDeadlineSeconds: 86400, ttlSecondsAfterFinished: 0, serviceAccount: 'backup-mover' },
      deletionDeadlineMs: 30_000,
    });
  });

  it('names the variable that is wrong', () => {
    expect(() => runControllerOptionsFromEnv({ SENDENSE_MOVER_IMAGE_PULL_POLICY: 'Sometimes' })).toThrow(/SENDENSE_MOVER_IMAGE_PULL_POLICY/);
    expect(() => runControllerOptionsFromEnv({ SENDENSE_MOVER_RESOURCES: '{cpu' })).toThrow(/SENDENSE_MOVER_RESOURCES is not JSON/);
    expect(() => runControllerOptionsFromEnv({ SENDENSE_RUN_CLEANUP_DEADLINE: 'soon' })).toThrow(/SENDENSE_RUN_CLEANUP_DEADLINE/);
  });

  it('gives each run its own iSCSI initiator', () => {
    expect(moverInitiatorName('0b1c2d3e-aaaa-bbbb-cccc-000000000001')).toBe('iqn.2026-01.io.sendense:mover-0b1c2d3e-aaaa-bbbb-cccc-000000000001');
  });
});
