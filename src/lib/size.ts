import { AppError, ErrorCode } from './errors.ts';

const units: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1000,
  kb: 1000,
  m: 1000 ** 2,
  mb: 1000 ** 2,
  g: 1000 ** 3,
  gb: 1000 ** 3,
  t: 1000 ** 4,
  tb: 1000 ** 4,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
};

/** Parses "1GiB", "512MiB", "4096" into bytes; `field` names the flag or CR field in the error. */
export function parseSize(text: string, field: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = match?.[2]?.toLowerCase() ?? '';
  const factor = units[unit];
  if (!match || factor === undefined) {
    throw new AppError(ErrorCode.InvalidInput, `${field}: "${text}" is not a size`, {
      hint: 'use bytes or a unit such as 512MiB, 1GiB, 10GB',
    });
  }
  const bytes = Math.round(Number(match[1]) * factor);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new AppError(ErrorCode.InvalidInput, `${field}: "${text}" is out of range`, { hint: 'use a positive size' });
  }
  return bytes;
}

export function formatBytes(bytes: number): string {
  const steps = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  const digits = (v: number) => (v >= 100 ? 0 : v >= 10 ? 1 : 2);
  let value = bytes;
  let i = 0;
  // Step up also when rounding would print 1024 of a unit (1023.9 MiB is "1.00 GiB", not "1024 MiB").
  while (i < steps.length - 1 && Math.abs(Number(value.toFixed(i === 0 ? 0 : digits(value)))) >= 1024) {
    value /= 1024;
    i++;
  }
  return `${i === 0 ? value : value.toFixed(digits(value))} ${steps[i]}`;
}
