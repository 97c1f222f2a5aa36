import { describe, expect, it } from 'vitest';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { describeFailure } from './program.ts';

describe('describeFailure', () => {
  it('prints an AppError as one line with its hint and a code-specific exit status', () => {
    const err = new AppError(ErrorCode.Forbidden, 'the Prism user may not list VMs (HTTP 403): ACCESS_DENIED: No permission\nto access', { hint: 'grant a role' });
    expect(describeFailure(err)).toEqual({ line: 'sendense-nutanix: the Prism user may not list VMs (HTTP 403): ACCESS_DENIED: No permission to access (grant a role)', exitCode: 3 });
    expect(describeFailure(new AppError(ErrorCode.TlsUntrusted, 'x')).exitCode).toBe(4);
    expect(describeFailure(new AppError(ErrorCode.InvalidInput, 'x')).exitCode).toBe(2);
    expect(describeFailure(new AppError(ErrorCode.TaskFailed, 'x')).exitCode).toBe(1);
  });
  it('marks anything else as an internal error', () => {
    expect(describeFailure(new TypeError('boom'))).toEqual({ line: 'sendense-nutanix: internal error: boom (set LOG_LEVEL=debug and report it)', exitCode: 1 });
  });
});
