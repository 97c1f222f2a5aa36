import { describe, expect, it } from 'vitest';
import { StorageTier, tierTuning, tuningFor } from './tiers.ts';

describe('tuningFor', () => {
  it('gives each tier its own request size and depth, SSD by default', () => {
    expect(tuningFor(undefined)).toEqual(tierTuning.ssd);
    expect(tuningFor(StorageTier.Archive)).toEqual({ requestSize: 4 * 1024 * 1024, inFlight: 2 });
    expect(tuningFor('hybrid')).toEqual({ requestSize: 1024 * 1024, inFlight: 4 });
  });

  it('applies a partial override on top of the tier', () => {
    expect(tuningFor('ssd', { inFlight: 1 })).toEqual({ requestSize: 2 * 1024 * 1024, inFlight: 1 });
  });

  it('names the bad field of an override and rejects unknown tiers', () => {
    expect(() => tuningFor('ssd', { requestSize: 1000 })).toThrow(/requestSize/);
    expect(() => tuningFor('ssd', { parallel: 3 })).toThrow(/override is invalid/);
    expect(() => tuningFor('tape')).toThrow(/storage tier "tape" is unknown/);
  });
});
