/** The control ports the simulator picks for its tgtd are ones tgtadm accepts (no daemon needed to tell). */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { TGTD_CONTROL_PORTS } from './iscsi.ts';

const execFileAsync = promisify(execFile);

/** tgtadm's complaint about the port, or '' when it accepted the port (and then failed to reach a daemon). */
async function portComplaint(port: number): Promise<string> {
  const result = await execFileAsync('tgtadm', ['-C', String(port), '--lld', 'iscsi', '--op', 'show', '--mode', 'target']).catch((err: { stderr?: string }) => ({ stderr: err.stderr ?? '' }));
  return /out of range/.test(result.stderr) ? result.stderr.trim() : '';
}

describe('tgtd control ports', () => {
  it('tgtadm accepts both ends of the range and refuses the port just above it', async () => {
    expect(await portComplaint(TGTD_CONTROL_PORTS.min)).toBe('');
    expect(await portComplaint(TGTD_CONTROL_PORTS.max)).toBe('');
    expect(await portComplaint(TGTD_CONTROL_PORTS.max + 1)).toContain('out of range');
  });
});
