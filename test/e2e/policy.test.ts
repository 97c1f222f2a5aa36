/**
 * The VMBackupPolicy controller on the real kube-apiserver (RBAC on, the operator's ServiceAccount and Role) against
 * the Prism simulator, with seconds-level crons so ticks come every 2 s. No run controller runs here: a run the
 * policy created stays active (no phase) until the test writes its status as the run controller would, which is
 * how Forbid and the full cadence are exercised. Each test protects its own VMs, because Forbid looks at every run
 * of a VM in the namespace.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { groupVersion } from '../../src/crds/common.ts';
import { vmBackupPolicy, type VMBackupPolicy } from '../../src/crds/vm-backup-policy.ts';
import { vmBackupRun, type VMBackupRun } from '../../src/crds/vm-backup-run.ts';
import { nutanixClusterController } from '../../src/controllers/nutanixcluster.ts';
import { policyLabel, scheduleTimeAnnotation, vmBackupPolicyController, vmUuidLabel } from '../../src/controllers/vmbackuppolicy.ts';
import { createLogger } from '../../src/lib/log.ts';
import { VmInventory } from '../../src/operator/inventory.ts';
import { PatchType } from '../../src/operator/kube.ts';
import { Manager } from '../../src/operator/manager.ts';
import { vmBackupPolicyType, vmBackupRunType } from '../../src/operator/resources.ts';
import { rfc3339 } from '../../src/operator/time.ts';
import { createPrismClient } from '../../src/prism/client.ts';
import type { Vm } from '../../src/prism/types.ts';
import { eventually, startOperatorEnv, type OperatorEnv } from '../operator/operator-env.ts';
import { startSim, type RunningSim } from '../support/sim.ts';

const eventList = z.object({ items: z.array(z.looseObject({ reason: z.string(), type: z.string(), note: z.string(), regarding: z.looseObject({ name: z.string() }) })) });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('VMBackupPolicy controller (e2e)', () => {
  let env: OperatorEnv;
  let sim: RunningSim;
  let manager: Manager | undefined;
  let vms: Vm[];
  const log = createLogger({ name: 'policy-e2e', level: 'warn' });
  const signal = (): AbortSignal => AbortSignal.timeout(10_000);

  const startManager = async (): Promise<Manager> => {
    const m = new Manager({ api: await env.operatorApi(), namespace: env.namespace, log, identity: 'policy-e2e', leaderElection: false, runner: { baseBackoffMs: 100, maxBackoffMs: 1000 } });
    m.addController(nutanixClusterController());
    m.addController(vmBackupPolicyController({ inventory: new VmInventory() }));
    await m.start();
    return m;
  };

  const policy = (name: string, spec: Record<string, unknown>) => ({
    apiVersion: groupVersion,
    kind: 'VMBackupPolicy',
    metadata: { name, namespace: env.namespace, labels: { 'argocd.argoproj.io/instance': 'backups' } },
    spec: {
      clusterRef: { name: 'prism' },
      schedule: '*/2 * * * * *',
      repository: { persistentVolumeClaim: { claimName: 'backups' } },
      ...spec,
    },
  });
  const readPolicy = async (name: string): Promise<VMBackupPolicy> => vmBackupPolicy.parse(await env.admin.get(vmBackupPolicyType, env.namespace, name, signal()));
  const runsOf = async (policyName: string): Promise<VMBackupRun[]> => {
    const list = await env.admin.list(vmBackupRunType, env.namespace, signal());
    return list.items.map((r) => vmBackupRun.parse(r)).filter((r) => r.metadata.labels?.[policyLabel] === policyName);
  };
  const tickOf = (run: VMBackupRun): number => Date.parse(run.metadata.annotations?.[scheduleTimeAnnotation] ?? '');
  const events = async (name: string) => {
    const list = eventList.parse(await env.admin.request({ method: 'GET', path: `/apis/events.k8s.io/v1/namespaces/${env.namespace}/events`, signal: signal() }));
    return list.items.filter((e) => e.regarding.name === name);
  };
  const patchSpec = (name: string, spec: Record<string, unknown>) => env.admin.patch(vmBackupPolicyType, env.namespace, name, { spec }, { patchType: PatchType.Merge, signal: signal() });
  /** Writes a run's status as the run controller would at the end of a run. */
  const finishRun = (run: VMBackupRun, phase: 'Succeeded' | 'Failed', backupType: 'Full' | 'Incremental') =>
    env.admin.patch(
      vmBackupRunType,
      env.namespace,
      run.metadata.name,
      { status: { phase, backupType, completionTime: rfc3339(new Date()), pointId: '20261126T000000Z-abcdef', vm: { name: run.spec.vm.name ?? '', uuid: run.spec.vm.uuid ?? '' } } },
      { patchType: PatchType.Merge, subresource: 'status', signal: signal() },
    );

  beforeAll(async () => {
    [env, sim] = await Promise.all([startOperatorEnv('vmbp'), startSim({ vms: 8, disksPerVm: 1, diskSize: '1MiB' })]);
    const direct = createPrismClient({ endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem });
    vms = (await direct.listVms()).sort((a, b) => a.name.localeCompare(b.name));
    await direct.close();
    await env.apply([
      { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'prism-ca', namespace: env.namespace }, stringData: { 'ca.crt': sim.caPem } },
      { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'prism-login', namespace: env.namespace }, stringData: { username: sim.username, password: sim.password } },
      {
        apiVersion: groupVersion,
        kind: 'NutanixCluster',
        metadata: { name: 'prism', namespace: env.namespace },
        spec: { endpoint: sim.endpoint, credentialsSecretRef: { name: 'prism-login' }, caSecretRef: { name: 'prism-ca' } },
      },
    ]);
    manager = await startManager();
  }, 120_000);

  afterAll(async () => {
    await manager?.stop();
    await Promise.all([env?.stop(), sim?.stop()]);
  });

  const vm = (i: number): Vm => {
    const found = vms[i];
    if (!found) throw new Error(`the simulator has no VM #${i}`);
    return found;
  };

  it('one run per selected VM per tick: named, labelled, owned, a full first; status names the VMs and the next tick', async () => {
    await env.apply([policy('every2s', { concurrencyPolicy: 'Allow', selector: { vmNames: [vm(0).name, vm(1).name] } })]);
    const runs = await eventually('runs of two ticks', async () => {
      const found = await runsOf('every2s');
      return new Set(found.map(tickOf)).size >= 2 ? found : undefined;
    });
    const p = await readPolicy('every2s');
    await patchSpec('every2s', { suspend: true });
    for (const tick of new Set(runs.map(tickOf))) {
      const ofTick = runs.filter((r) => tickOf(r) === tick);
      expect(ofTick.map((r) => r.spec.vm.name).sort()).toEqual([vm(0).name, vm(1).name]);
      expect(new Date(tick).getUTCSeconds() % 2).toBe(0);
    }
    const first = runs[0];
    expect(first?.metadata.name).toMatch(new RegExp(`^every2s-[0-9a-f]{8}-${Math.floor(tickOf(first as VMBackupRun) / 1000)}$`));
    expect(first?.metadata.labels).toEqual({ [policyLabel]: 'every2s', [vmUuidLabel]: first?.spec.vm.uuid });
    expect(first?.metadata.ownerReferences).toEqual([expect.objectContaining({ kind: 'VMBackupPolicy', name: 'every2s', uid: p.metadata.uid, controller: true })]);
    expect(runs.every((r) => r.spec.type === 'full' && r.spec.policyRef?.name === 'every2s')).toBe(true);
    expect(p.status?.protectedVMCount).toBe(2);
    expect(p.status?.protectedVMs?.map((v) => v.name)).toEqual([vm(0).name, vm(1).name]);
    expect(Date.parse(p.status?.lastScheduleTime ?? '')).toBeGreaterThanOrEqual(Math.max(...runs.map(tickOf)));
    expect(Date.parse(p.status?.nextScheduleTime ?? '')).toBeGreaterThan(Date.parse(p.status?.lastScheduleTime ?? ''));
    expect(p.status?.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True', observedGeneration: p.metadata.generation });
    expect((await events('every2s')).some((e) => e.reason === 'RunsCreated')).toBe(true);
  });

  it('Forbid skips ticks while a run of the VM is active; the next run after a full is incremental-capable', async () => {
    await env.apply([policy('forbid', { concurrencyPolicy: 'Forbid', selector: { vmNames: [vm(2).name] } })]);
    const [first] = await eventually('the first run', async () => {
      const found = await runsOf('forbid');
      return found.length > 0 ? found : undefined;
    });
    // Two more ticks pass while the first run is active (no phase yet): both are skipped.
    await eventually('two skipped ticks', async () => {
      const p = await readPolicy('forbid');
      const skipped = (await events('forbid')).filter((e) => e.reason === 'RunSkipped');
      return Date.parse(p.status?.lastScheduleTime ?? '') >= tickOf(first as VMBackupRun) + 4000 && skipped.length > 0 ? skipped : undefined;
    });
    expect(await runsOf('forbid')).toHaveLength(1);
    const skippedNote = (await events('forbid')).find((e) => e.reason === 'RunSkipped')?.note;
    expect(skippedNote).toMatch(new RegExp(`${vm(2).name} \\(run ${first?.metadata.name} is still Pending\\).*Forbid`));

    await finishRun(first as VMBackupRun, 'Succeeded', 'Full');
    const second = await eventually('a run after the success', async () => (await runsOf('forbid')).find((r) => r.metadata.name !== first?.metadata.name));
    await patchSpec('forbid', { suspend: true });
    expect(second.spec.type).toBe('auto');
    const recorded = (await readPolicy('forbid')).status?.lastSuccessfulRuns?.find((l) => l.vmUUID === vm(2).uuid.toLowerCase());
    expect(recorded).toMatchObject({ runName: first?.metadata.name, backupType: 'Full', incrementalsSinceFull: 0, pointId: '20261126T000000Z-abcdef' });
  });

  it('after the operator was down for several ticks: one catch-up run within the deadline, a recorded skip beyond it', async () => {
    await env.apply([
      policy('catchup', { concurrencyPolicy: 'Allow', selector: { vmNames: [vm(3).name] } }),
      policy('deadline', { concurrencyPolicy: 'Allow', schedule: '*/10 * * * * *', startingDeadlineSeconds: 1, selector: { vmNames: [vm(4).name] } }),
    ]);
    await eventually('a first catchup run', async () => ((await runsOf('catchup')).length > 0 ? true : undefined));
    await manager?.stop();
    manager = undefined;
    const stoppedAt = Date.now();
    // Down for at least 7 s (3+ ticks of */2), and restarted 3-8 s after a */10 tick so that tick is beyond the 1 s deadline.
    await sleep(7000);
    while (Date.now() % 10_000 < 3000 || Date.now() % 10_000 > 8000) await sleep(100);
    const deadlineRunsBefore = (await runsOf('deadline')).length;
    const restartedAt = Date.now();
    manager = await startManager();

    const afterRestart = await eventually('the catch-up run', async () => {
      const found = (await runsOf('catchup')).filter((r) => tickOf(r) > stoppedAt);
      return found.length > 0 ? found : undefined;
    });
    const missedWindow = afterRestart.filter((r) => tickOf(r) <= restartedAt);
    expect(missedWindow).toHaveLength(1);
    expect(restartedAt - tickOf(missedWindow[0] as VMBackupRun)).toBeLessThan(2000); // the newest missed tick
    expect((await events('catchup')).find((e) => e.reason === 'MissedSchedules')?.note).toMatch(/earlier tick\(s\) were missed/);

    const skipped = await eventually('the skip recorded', async () => (await readPolicy('deadline')).status?.lastSkippedSchedule);
    expect(skipped.reason).toBe('MissedStartingDeadline');
    expect(skipped.message).toMatch(/spec\.startingDeadlineSeconds/);
    expect((await runsOf('deadline')).filter((r) => tickOf(r) > stoppedAt && tickOf(r) <= restartedAt)).toEqual([]);
    expect((await runsOf('deadline')).length).toBe(deadlineRunsBefore);
    expect((await events('deadline')).some((e) => e.reason === 'MissedStartingDeadline' && e.type === 'Warning')).toBe(true);
    await Promise.all([patchSpec('catchup', { suspend: true }), patchSpec('deadline', { suspend: true })]);
  });

  it('a changed policy is reconciled at once; ticks missed while suspended are not run on resume', async () => {
    await env.apply([policy('toggle', { concurrencyPolicy: 'Allow', selector: { vmNames: [vm(5).name] } })]);
    await eventually('a first toggle run', async () => ((await runsOf('toggle')).length > 0 ? true : undefined));
    const observed = async (generation: number | undefined, reason: string) => {
      const p = await readPolicy('toggle');
      const ready = p.status?.conditions?.find((c) => c.type === 'Ready');
      return p.status?.observedGeneration === generation && ready?.reason === reason ? p : undefined;
    };
    const latencies: number[] = [];
    const change = async (suspend: boolean): Promise<VMBackupPolicy> => {
      const started = performance.now();
      const patched = vmBackupPolicy.parse(await patchSpec('toggle', { suspend }));
      const p = await eventually('the change observed', () => observed(patched.metadata.generation, suspend ? 'Suspended' : 'Scheduled'), 10_000);
      latencies.push(performance.now() - started);
      return p;
    };
    const suspended = await change(true);
    const suspendedAt = Date.parse(suspended.status?.conditions?.find((c) => c.type === 'Ready')?.lastTransitionTime ?? '');
    await eventually('a tick skipped while suspended', async () => ((await readPolicy('toggle')).status?.lastSkippedSchedule?.reason === 'Suspended' ? true : undefined));
    const resumedAt = Date.now();
    await change(false);
    const next = await eventually('a run after resuming', async () => (await runsOf('toggle')).find((r) => tickOf(r) > suspendedAt + 1000));
    await patchSpec('toggle', { suspend: true });
    expect(tickOf(next)).toBeGreaterThan(resumedAt - 1000);
    // Measured, reported, not asserted (issue 5: "a changed policy reconciled within one second").
    console.log(`policy change → status observed: ${latencies.map((ms) => `${ms.toFixed(0)} ms`).join(', ')}`);
  });

  it('schema-valid but unusable input gets a Ready=False condition naming the field and the fix', async () => {
    await env.apply([
      policy('badzone', { timeZone: 'Mars/Olympus_Mons', selector: { vmNames: [vm(6).name] } }),
      policy('badcron', { schedule: '0 0 31 2 *', selector: { vmNames: [vm(6).name] } }),
      policy('nocluster', { clusterRef: { name: 'elsewhere' }, selector: { vmNames: [vm(6).name] } }),
      policy('novm', { schedule: '0 0 1 1 *', selector: { vmNames: [vm(6).name, 'no-such-vm'], categories: { NoSuchCategory: ['x'] } } }),
      policy('nothing', { schedule: '0 0 1 1 *', selector: { namePattern: 'zzz-*' } }),
    ]);
    const ready = (name: string) =>
      eventually(`${name} Ready=False`, async () => {
        const c = (await readPolicy(name)).status?.conditions?.find((x) => x.type === 'Ready');
        return c?.status === 'False' ? c : undefined;
      });
    expect(await ready('badzone')).toMatchObject({ reason: 'InvalidTimeZone', message: expect.stringMatching(/^spec\.timeZone: "Mars\/Olympus_Mons"/) });
    expect(await ready('badcron')).toMatchObject({ reason: 'InvalidSchedule', message: expect.stringMatching(/^spec\.schedule: "0 0 31 2 \*"/) });
    expect(await ready('nocluster')).toMatchObject({ reason: 'ClusterNotFound', message: expect.stringMatching(/^spec\.clusterRef\.name: NutanixCluster .*\/elsewhere does not exist/) });
    const missing = await ready('novm');
    expect(missing).toMatchObject({ reason: 'VMNotFound', message: expect.stringContaining('spec.selector.vmNames[1]: no-such-vm') });
    expect((await readPolicy('novm')).status?.protectedVMs).toEqual([{ name: vm(6).name, uuid: vm(6).uuid }]);
    expect(await ready('nothing')).toMatchObject({ reason: 'NoVMsSelected', message: expect.stringMatching(/^spec\.selector matches no VM/) });
    expect(await runsOf('badzone')).toEqual([]);
  });
});
