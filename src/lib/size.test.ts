import { describe, expect, it } from 'vitest';
import { formatBytes, parseSize } from './size.ts';

describe('parseSize', () => {
  it('parses binary and decimal units', () => {
    expect(parseSize('1GiB', '--disk-size')).toBe(1024 ** 3);
    expect(parseSize('512MiB', '--disk-size')).toBe(512 * 1024 ** 2);
    expect(parseSize('10GB', '--disk-size')).toBe(10e9);
    expect(parseSize('4096', '--disk-size')).toBe(4096);
  });
  it('names the field in its error', () => {
    expect(() => parseSize('lots', '--disk-size')).toThrow(/--disk-size: "lots" is not a size/);
    expect(() => parseSize('0', '--disk-size')).toThrow(/out of range/);
  });
});

describe('formatBytes', () => {
  it('uses binary units', () => {
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(5 * 1024 ** 3)).toBe('5.00 GiB');
    expect(formatBytes(1024 ** 3 - 1536)).toBe('1.00 GiB');
    expect(formatBytes(1023)).toBe('1023 B');
  });
});
