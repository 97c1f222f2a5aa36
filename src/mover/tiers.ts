/**
 * Request size and requests in flight per storage tier. The seed note (MOD-05 §Storage Tiers) proposed
 * SSD 8 × 1 MiB, hybrid (DAS-SATA) 4 × 512 KiB, archive (cloud) 2 × 4 MiB. Measured on the 2-core build box
 * (docs/datapath.md): fewer, larger requests win, and more than 4 in flight only adds context switches,
 * so SSD uses 4 × 2 MiB; a slower tier gets fewer, larger requests to be gentle with the cluster.
 */
import { z } from 'zod';
import { AppError, ErrorCode } from '../lib/errors.ts';

export const StorageTier = { Ssd: 'ssd', Hybrid: 'hybrid', Archive: 'archive' } as const;
export type StorageTier = (typeof StorageTier)[keyof typeof StorageTier];

export interface CopyTuning {
  /** Bytes per NBD read request; a multiple of the qcow2 cluster size. */
  requestSize: number;
  /** NBD read requests in flight per disk. */
  inFlight: number;
}

const MiB = 1024 * 1024;

export const tierTuning: Readonly<Record<StorageTier, CopyTuning>> = {
  [StorageTier.Ssd]: { requestSize: 2 * MiB, inFlight: 4 },
  [StorageTier.Hybrid]: { requestSize: 1 * MiB, inFlight: 4 },
  [StorageTier.Archive]: { requestSize: 4 * MiB, inFlight: 2 },
};

export const CopyTuningOverrideSchema = z
  .object({
    requestSize: z.number().int().min(64 * 1024).max(32 * MiB).optional(),
    inFlight: z.number().int().min(1).max(64).optional(),
  })
  .strict();

/** The tier's tuning with an override (e.g. from a CR or CLI flag) applied; the override is validated. */
export function tuningFor(tier: StorageTier | string | undefined, override: unknown = {}): CopyTuning {
  const base = tier === undefined ? tierTuning.ssd : tierTuning[tier as StorageTier];
  if (!base) {
    throw new AppError(ErrorCode.InvalidInput, `storage tier "${tier}" is unknown`, { hint: `use one of ${Object.values(StorageTier).join(', ')}` });
  }
  const parsed = CopyTuningOverrideSchema.safeParse(override);
  if (!parsed.success) {
    throw new AppError(ErrorCode.InvalidInput, `copy tuning override is invalid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`, {
      hint: 'requestSize is 64 KiB-32 MiB in bytes, inFlight 1-64',
    });
  }
  return { requestSize: parsed.data.requestSize ?? base.requestSize, inFlight: parsed.data.inFlight ?? base.inFlight };
}
