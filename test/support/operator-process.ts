/**
 * Runs the operator as a local process (`bin/sendense-nutanix operator`) the way its Deployment would: one watched
 * namespace, a kubeconfig of its ServiceAccount, downward-API style identity. The process dies with its parent
 * (setpriv --pdeathsig) even when a test or the demo is killed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const bin = join(resolve(dirname(fileURLToPath(import.meta.url)), '../..'), 'bin/sendense-nutanix');

export interface OperatorProcessOptions {
  kubeconfig: string;
  namespace: string;
  /** Extra environment (e.g. LOG_LEVEL, SENDENSE_MOVER_TTL_SECONDS_AFTER_FINISHED). */
  env?: Record<string, string>;
  /** Short leader-election timings for tests; the defaults are the production ones. */
  fastLeaderElection?: boolean;
}

export interface OperatorProcess {
  child: ChildProcess;
  /** The last 200 kB the operator logged. */
  output(): string;
}

export function startOperatorProcess(options: OperatorProcessOptions): OperatorProcess {
  const args = ['--pdeathsig', 'KILL', bin, 'operator', '--kubeconfig', options.kubeconfig, '--metrics-port', '0', '--health-port', '0', '--bind-address', '127.0.0.1'];
  if (options.fastLeaderElection) args.push('--lease-duration', '4s', '--renew-deadline', '3s', '--retry-period', '1s', '--discovery-interval', '30s');
  const child = spawn('setpriv', args, {
    env: {
      ...process.env,
      WATCH_NAMESPACE: options.namespace,
      POD_NAMESPACE: options.namespace,
      POD_NAME: `operator-${randomBytes(3).toString('hex')}`,
      // The kubelet stand-in runs export Jobs from this checkout, whatever image they name.
      SENDENSE_MOVER_IMAGE: 'ignored-by-the-kubelet-stand-in:local',
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'info',
      ...options.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const append = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-200_000);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  return { child, output: () => output };
}
