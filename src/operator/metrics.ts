/**
 * Prometheus metrics of the operator in one registry: the controller-runtime names dashboards already know
 * (controller_runtime_reconcile_*, workqueue_*) and the domain metrics, named like velero_backup_* under the
 * sendense_ prefix. Controllers import `operatorMetrics()` and update the domain metrics directly.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface OperatorMetrics {
  registry: Registry;
  reconcileTotal: Counter<'controller' | 'result'>;
  reconcileErrors: Counter<'controller'>;
  reconcileTime: Histogram<'controller'>;
  workqueueDepth: Gauge<'name'>;
  workqueueAdds: Counter<'name'>;
  workqueueRetries: Counter<'name'>;
  leaderElectionMaster: Gauge<'name'>;
  backupAttempts: Counter<'policy'>;
  backupSuccesses: Counter<'policy'>;
  backupPartialFailures: Counter<'policy'>;
  backupFailures: Counter<'policy'>;
  backupDuration: Histogram<'policy'>;
  backupBytesTransferred: Counter<'policy'>;
  backupLastSuccessfulTimestamp: Gauge<'policy'>;
  clusterVms: Gauge<'cluster'>;
}

/** A fresh registry with every metric registered (one per Manager, so tests can run several in a process). */
export function createOperatorMetrics(): OperatorMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const r = [registry];
  return {
    registry,
    reconcileTotal: new Counter({ name: 'controller_runtime_reconcile_total', help: 'Reconciliations per controller and result (success, error, requeue, requeue_after).', labelNames: ['controller', 'result'], registers: r }),
    reconcileErrors: new Counter({ name: 'controller_runtime_reconcile_errors_total', help: 'Reconciliations that failed.', labelNames: ['controller'], registers: r }),
    reconcileTime: new Histogram({
      name: 'controller_runtime_reconcile_time_seconds',
      help: 'Time per reconciliation.',
      labelNames: ['controller'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: r,
    }),
    workqueueDepth: new Gauge({ name: 'workqueue_depth', help: 'Keys waiting in the work queue.', labelNames: ['name'], registers: r }),
    workqueueAdds: new Counter({ name: 'workqueue_adds_total', help: 'Keys handed to workers.', labelNames: ['name'], registers: r }),
    workqueueRetries: new Counter({ name: 'workqueue_retries_total', help: 'Rate-limited re-adds after failures.', labelNames: ['name'], registers: r }),
    leaderElectionMaster: new Gauge({ name: 'leader_election_master_status', help: '1 while this instance holds the lease.', labelNames: ['name'], registers: r }),
    backupAttempts: new Counter({ name: 'sendense_backup_attempt_total', help: 'VM backup runs started.', labelNames: ['policy'], registers: r }),
    backupSuccesses: new Counter({ name: 'sendense_backup_success_total', help: 'VM backup runs that succeeded.', labelNames: ['policy'], registers: r }),
    backupPartialFailures: new Counter({ name: 'sendense_backup_partial_failure_total', help: 'VM backup runs where some disks failed.', labelNames: ['policy'], registers: r }),
    backupFailures: new Counter({ name: 'sendense_backup_failure_total', help: 'VM backup runs that failed.', labelNames: ['policy'], registers: r }),
    backupDuration: new Histogram({
      name: 'sendense_backup_duration_seconds',
      help: 'Duration of finished VM backup runs.',
      labelNames: ['policy'],
      buckets: [10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800],
      registers: r,
    }),
    backupBytesTransferred: new Counter({ name: 'sendense_backup_bytes_transferred_total', help: 'Bytes read from Nutanix and written to repositories.', labelNames: ['policy'], registers: r }),
    backupLastSuccessfulTimestamp: new Gauge({ name: 'sendense_backup_last_successful_timestamp', help: 'Unix time of the last successful run.', labelNames: ['policy'], registers: r }),
    clusterVms: new Gauge({ name: 'sendense_nutanix_cluster_vms', help: 'VMs discovered on each NutanixCluster.', labelNames: ['cluster'], registers: r }),
  };
}
