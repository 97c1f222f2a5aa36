import { describe, expect, it } from 'vitest';
import { operatorSettings } from './operator.ts';

const defaults = {
  metricsPort: '8080',
  healthPort: '8081',
  bindAddress: '0.0.0.0',
  leaderElect: true,
  leaseDuration: '30s',
  renewDeadline: '20s',
  retryPeriod: '5s',
  discoveryInterval: '5m',
  logLevel: 'info',
};

describe('operator settings', () => {
  it('takes the namespace from the flag, else POD_NAMESPACE, and the identity from POD_NAME', () => {
    const settings = operatorSettings({ ...defaults, namespace: 'backup' }, { POD_NAMESPACE: 'ignored', POD_NAME: 'operator-7d9f-abcde' });
    expect(settings).toMatchObject({
      namespace: 'backup',
      identity: 'operator-7d9f-abcde',
      metricsPort: 8080,
      healthPort: 8081,
      leaderElection: { leaseDurationMs: 30_000, renewDeadlineMs: 20_000, retryPeriodMs: 5000 },
      discoveryIntervalMs: 300_000,
    });
    expect(operatorSettings(defaults, { POD_NAMESPACE: 'from-downward-api' }).namespace).toBe('from-downward-api');
    expect(operatorSettings({ ...defaults, namespace: 'x', leaderElect: false }, {}).leaderElection).toBe(false);
  });

  it('names the flag that is wrong', () => {
    expect(() => operatorSettings(defaults, {})).toThrow(/no namespace to watch/);
    expect(() => operatorSettings({ ...defaults, namespace: 'x', metricsPort: '99999' }, {})).toThrow(/--metrics-port must be 0-65535/);
    expect(() => operatorSettings({ ...defaults, namespace: 'x', leaseDuration: 'long' }, {})).toThrow(/--lease-duration: "long" is not a duration/);
    expect(() => operatorSettings({ ...defaults, namespace: 'x', logLevel: 'loud' }, {})).toThrow(/--log-level must be fatal, error, warn, info, debug or trace/);
  });
});
