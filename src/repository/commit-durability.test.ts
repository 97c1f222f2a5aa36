/**
 * The commit's crash guarantee at the system-call level: a power loss at any moment leaves either no point or a
 * complete one only if every file and folder of the staging is fsynced before the rename that publishes it, and
 * the VM folder after it. Several writes skip their own fsync because the commit fsyncs the whole staging
 * (checksum files, the manifest, the folder once); this test watches a real commit under strace to prove the order.
 */
import { execFile } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from './test-repo.ts';

const run = promisify(execFile);
const nodeBin = join(import.meta.dirname, '../../node_modules/.bin/node');

interface Call {
  pid: number;
  name: string;
  args: string;
}

/** Successful calls in the order they returned (a call another thread interrupted is placed where it resumed). */
function parseTrace(text: string): Call[] {
  const calls: Call[] = [];
  const unfinished = new Map<number, { name: string; args: string }>();
  for (const line of text.split('\n')) {
    const whole = /^(\d+) +(\w+)\((.*)\) += (-?\d+)/.exec(line);
    if (whole) {
      if (Number(whole[4]) >= 0) calls.push({ pid: Number(whole[1]), name: whole[2]!, args: whole[3]! });
      continue;
    }
    const started = /^(\d+) +(\w+)\((.*) <unfinished \.\.\.>$/.exec(line);
    if (started) {
      unfinished.set(Number(started[1]), { name: started[2]!, args: started[3]! });
      continue;
    }
    const resumed = /^(\d+) +<\.\.\. (\w+) resumed>.*\) += (-?\d+)/.exec(line);
    const call = resumed && unfinished.get(Number(resumed[1]));
    if (resumed && call && call.name === resumed[2] && Number(resumed[3]) >= 0) calls.push({ pid: Number(resumed[1]), ...call });
  }
  return calls;
}

describe('commit durability (strace)', () => {
  let work: Awaited<ReturnType<typeof tempDir>>;
  beforeEach(async () => {
    work = await tempDir('repo-durability-');
  });
  afterEach(async () => work.remove());

  it('fsyncs every file and folder of the staging before the rename into place, and the VM folder after it', async () => {
    const repo = join(work.path, 'repo');
    const trace = join(work.path, 'trace.txt');
    const { stdout } = await run('strace', ['-f', '-y', '-qq', '-o', trace, '-e', 'trace=execve,fsync,fdatasync,rename', nodeBin, join(import.meta.dirname, 'commit-child.ts'), repo, work.path]);
    const pointIds = stdout.trim().split(' ');
    expect(pointIds).toHaveLength(2);
    const calls = parseTrace(await readFile(trace, 'utf8'));
    // qemu-img and qemu-io children fsync images of their own accord: only the Node process's fsyncs count.
    const children = new Set(calls.filter((c) => c.name === 'execve' && !c.args.includes('node')).map((c) => c.pid));
    const vmFolder = join(repo, 'cluster-1', 'vm-1');
    for (const pointId of pointIds) {
      const staging = join(vmFolder, `.staging-${pointId}`);
      const publish = calls.findIndex((c) => c.name === 'rename' && c.args === `"${staging}", "${join(vmFolder, pointId)}"`);
      expect(publish).toBeGreaterThan(0);
      const synced = (path: string, from: number, to: number) =>
        calls.slice(from, to).some((c) => (c.name === 'fsync' || c.name === 'fdatasync') && !children.has(c.pid) && c.args.endsWith(`<${path}>`));
      // The staging's last step before the rename: everything written into it since it was begun.
      const begun = calls.findIndex((c) => c.name === 'rename' && c.args.includes(`${staging}/journal.json`));
      const names = await readdir(join(vmFolder, pointId));
      expect(names.sort()).toEqual(['disk-0.qcow2', 'disk-0.sums.ndjson', 'disk-1.qcow2', 'disk-1.sums.ndjson', 'journal.json', 'manifest.json']);
      for (const name of names) expect({ name, synced: synced(join(staging, name), begun, publish) }).toEqual({ name, synced: true });
      const lastSyncOfStaging = calls.findLastIndex((c, i) => i < publish && c.name === 'fsync' && c.args.endsWith(`<${staging}>`));
      const lastFileSync = Math.max(...names.map((name) => calls.findLastIndex((c, i) => i < publish && c.name === 'fsync' && !children.has(c.pid) && c.args.endsWith(`<${join(staging, name)}>`))));
      expect(lastSyncOfStaging).toBeGreaterThan(lastFileSync);
      expect(synced(vmFolder, publish, calls.length)).toBe(true);
    }
  });
});
