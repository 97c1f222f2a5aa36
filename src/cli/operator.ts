/**
 * `sendense-nutanix operator`: runs the controllers in one namespace until SIGTERM. Every flag has an
 * environment variable so the Deployment can set it from the downward API.
 */
import { hostname } from 'node:os';
import type { Command } from 'commander';
import { z } from 'zod';
import { nutanixClusterController } from '../controllers/nutanixcluster.ts';
import { runControllerOptionsFromEnv, vmBackupRunController } from '../controllers/vmbackuprun.ts';
import { vmBackupPolicyController } from '../controllers/vmbackuppolicy.ts';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { createLogger } from '../lib/log.ts';
import { VmInventory } from '../operator/inventory.ts';
import { KubeApi } from '../operator/kube.ts';
import { Manager } from '../operator/manager.ts';
import { parseDuration } from '../operator/time.ts';
import { commandContext, createProgram, runProgram } from './program.ts';

const port = (field: string) =>
  z.coerce.number({ error: `${field} must be a port number` }).int().min(0, `${field} must be 0-65535`).max(65535, `${field} must be 0-65535`);

const operatorFlags = z.object({
  namespace: z.string().optional(),
  kubeconfig: z.string().optional(),
  metricsPort: port('--metrics-port'),
  healthPort: port('--health-port'),
  bindAddress: z.string().min(1),
  leaderElect: z.boolean(),
  identity: z.string().optional(),
  leaseDuration: z.string(),
  renewDeadline: z.string(),
  retryPeriod: z.string(),
  discoveryInterval: z.string(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace'], { error: '--log-level must be fatal, error, warn, info, debug or trace' }),
});

export interface OperatorSettings {
  namespace: string;
  kubeconfig: string | undefined;
  metricsPort: number;
  healthPort: number;
  bindAddress: string;
  leaderElection: { leaseDurationMs: number; renewDeadlineMs: number; retryPeriodMs: number } | false;
  identity: string;
  discoveryIntervalMs: number;
  logLevel: string;
}

/** Flags (already defaulted from the environment by commander) → settings; errors name the flag. */
export function operatorSettings(flags: unknown, env: NodeJS.ProcessEnv = process.env): OperatorSettings {
  const parsed = operatorFlags.safeParse(flags);
  if (!parsed.success) {
    throw new AppError(ErrorCode.InvalidInput, parsed.error.issues.map((i) => i.message).join('; '), { hint: 'see sendense-nutanix operator --help' });
  }
  const f = parsed.data;
  const namespace = f.namespace || env.POD_NAMESPACE;
  if (!namespace) {
    throw new AppError(ErrorCode.InvalidInput, 'no namespace to watch', {
      hint: 'pass --namespace, or set WATCH_NAMESPACE (or POD_NAMESPACE from the downward API)',
    });
  }
  const leaderElection = f.leaderElect
    ? {
        leaseDurationMs: parseDuration(f.leaseDuration, '--lease-duration'),
        renewDeadlineMs: parseDuration(f.renewDeadline, '--renew-deadline'),
        retryPeriodMs: parseDuration(f.retryPeriod, '--retry-period'),
      }
    : false;
  return {
    namespace,
    kubeconfig: f.kubeconfig,
    metricsPort: f.metricsPort,
    healthPort: f.healthPort,
    bindAddress: f.bindAddress,
    leaderElection,
    identity: f.identity || env.POD_NAME || `${hostname()}-${process.pid}`,
    discoveryIntervalMs: parseDuration(f.discoveryInterval, '--discovery-interval'),
    logLevel: f.logLevel,
  };
}

export function registerOperatorCommand(program: Command): void {
  program
    .command('operator')
    .description('run the Kubernetes operator (NutanixCluster, VMBackupPolicy, VMBackupRun controllers) in one namespace')
    .option('--namespace <ns>', 'namespace to watch (env WATCH_NAMESPACE, else POD_NAMESPACE)', process.env.WATCH_NAMESPACE)
    .option('--kubeconfig <path>', 'kubeconfig file (default: $KUBECONFIG, then in-cluster, then ~/.kube/config)')
    .option('--metrics-port <port>', 'port of /metrics (env SENDENSE_METRICS_PORT)', process.env.SENDENSE_METRICS_PORT ?? '8080')
    .option('--health-port <port>', 'port of /healthz and /readyz (env SENDENSE_HEALTH_PORT)', process.env.SENDENSE_HEALTH_PORT ?? '8081')
    .option('--bind-address <ip>', 'address the HTTP endpoints listen on', process.env.BIND_ADDRESS ?? '0.0.0.0')
    .option('--no-leader-elect', 'run without leader election (one replica only)')
    .option('--identity <id>', 'leader-election identity (env POD_NAME, else hostname-pid)')
    .option('--lease-duration <d>', 'how long a lease is valid without renewal', '30s')
    .option('--renew-deadline <d>', 'how long the leader keeps trying to renew before it stops reconciling', '20s')
    .option('--retry-period <d>', 'interval of lease renewals and acquisition attempts', '5s')
    .option('--discovery-interval <d>', 'how often each NutanixCluster is rediscovered', '5m')
    .option('--log-level <level>', 'fatal, error, warn, info, debug or trace (env LOG_LEVEL)', process.env.LOG_LEVEL ?? 'info')
    .action(async (flags: unknown) => {
      const settings = operatorSettings(flags);
      const { signal } = commandContext();
      const log = createLogger({ name: 'operator', level: settings.logLevel });
      const manager = new Manager({
        api: KubeApi.fromKubeconfig(settings.kubeconfig),
        namespace: settings.namespace,
        log,
        identity: settings.identity,
        leaderElection: settings.leaderElection,
        metricsPort: settings.metricsPort,
        healthPort: settings.healthPort,
        bindAddress: settings.bindAddress,
      });
      manager.addController(nutanixClusterController({ discoveryIntervalMs: settings.discoveryIntervalMs }));
      manager.addController(vmBackupRunController(runControllerOptionsFromEnv(process.env)));
      manager.addController(vmBackupPolicyController({ inventory: new VmInventory() }));
      log.info({ namespace: settings.namespace, identity: settings.identity, leaderElection: settings.leaderElection !== false }, 'operator starting');
      const stopped = new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
      await Promise.race([manager.start(), stopped]);
      await stopped;
      log.info('operator stopping');
      await manager.stop();
    });
}

// bin/sendense-nutanix starts `operator` here rather than at main.ts, so the operator process never loads the other
// commands' modules (the backup data path: mover, NBD client, QCOW2 writer, repository), about 5 MiB (issue 5).
if (import.meta.main) {
  const program = createProgram();
  registerOperatorCommand(program);
  process.exitCode = await runProgram(program, process.argv);
}
