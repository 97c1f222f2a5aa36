/**
 * Export Jobs end to end without the controller: the test plays the controller's part (recovery point through the
 * Prism client, a VMBackupRun with its status.disks list, Jobs from the builder), the kubelet stand-in runs the
 * Jobs as `sendense-nutanix mover …` under the mover ServiceAccount (RBAC: vmbackupruns get, status get/patch
 * only), against the real simulator (iSCSI via tgtd), a real kube-apiserver and real files. Restored disks are
 * compared with the simulator's by qemu-img.
 */
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { BatchV1Api, CoreV1Api, CustomObjectsApi, KubeConfig, RbacAuthorizationV1Api, Watch, type V1Job } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiGroup, apiVersion, groupVersion } from '../../src/crds/common.ts';
import { customResourceKinds, defaultCrdDir } from '../../src/crds/generate.ts';
import { vmBackupRun } from '../../src/crds/vm-backup-run.ts';
import { recoveryPointName } from '../../src/engine/cleanup.ts';
import { CommitJobResultSchema, DiskJobResultSchema, TerminationMessageSchema, type DiskRequestInput } from '../../src/jobs/contract.ts';
import { diskStatusPatch, kubeRunStatusWriter } from '../../src/jobs/run-status.ts';
import { KubeApi } from '../../src/operator/kube.ts';
import { buildCleanupJob, buildCommitJob, buildDiskJob, diskJobName, moverServiceAccount, type JobEnvironment } from '../../src/jobs/job-spec.ts';
import { createLogger } from '../../src/lib/log.ts';
import { createPrismClient } from '../../src/prism/client.ts';
import { Consistency, type PrismClient, type RecoveryPoint, type Vm } from '../../src/prism/types.ts';
import { listPoints, newPointId, restoreDisk, verifyRepository } from '../../src/repository/index.ts';
import { mergePatchOptions, startKubelet, type KubeletStandIn } from '../support/kubelet.ts';
import { startSim, type RunningSim } from '../support/sim.ts';
import { requireTestbedBinaries, startTestbed, type Testbed } from '../support/testbed.ts';

const run = promisify(execFile);
const namespace = `jobs-${randomBytes(4).toString('hex')}`;
const initiatorName = `iqn.2026-11.io.sendense:jobs-${hostname()}`;
const repositoryPath = 'lab';
const logger = createLogger({ level: 'warn', name: 'export-jobs-test' });
const runs = { group: apiGroup, version: apiVersion, namespace, plural: 'vmbackupruns' };

interface DiskStatusEntry {
  diskUUID: string;
  progressPercent?: number;
  changedBytes?: number;
  transferredBytes?: number;
}

describe('export Jobs (mover disk / commit / cleanup) on the real apiserver with the kubelet stand-in', () => {
  let sim: RunningSim;
  let prism: PrismClient;
  let testbed: Testbed;
  let kubelet: KubeletStandIn;
  let admin: KubeConfig;
  let batch: BatchV1Api;
  let objects: CustomObjectsApi;
  let work: string;
  let repoHostDir: string;
  let vm: Vm;
  let environment: JobEnvironment;
  let endpoint: string;

  async function waitForJob(name: string): Promise<'Complete' | 'Failed'> {
    for (;;) {
      const job = await batch.readNamespacedJob({ name, namespace });
      const done = job.status?.conditions?.find((c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True');
      if (done) return done.type as 'Complete' | 'Failed';
      await sleep(200);
    }
  }

  async function createRun(name: string) {
    const created = vmBackupRun.parse(
      await objects.createNamespacedCustomObject({
        ...runs,
        body: {
          apiVersion: groupVersion,
          kind: 'VMBackupRun',
          metadata: { name },
          spec: { clusterRef: { name: 'lab' }, repository: { persistentVolumeClaim: { claimName: 'backups', path: repositoryPath } }, vm: { uuid: vm.uuid } },
        },
      }),
    );
    // The controller's part: one status.disks entry per disk, in disk order, before the Jobs exist.
    await objects.patchNamespacedCustomObjectStatus(
      {
        ...runs,
        name,
        body: { status: { phase: 'Exporting', disks: vm.disks.map((d) => ({ diskUUID: d.uuid, sizeBytes: d.sizeBytes, jobName: diskJobName(name, d.index) })) } },
      },
      mergePatchOptions(),
    );
    return { name, namespace, uid: created.metadata.uid ?? '' };
  }

  /** Every disk-entry state the run's status went through, from a watch started before the Jobs. */
  async function watchDiskStatus(name: string): Promise<{ entries: DiskStatusEntry[][]; stop: () => void }> {
    const entries: DiskStatusEntry[][] = [];
    const request = await new Watch(admin).watch(
      `/apis/${apiGroup}/${apiVersion}/namespaces/${namespace}/vmbackupruns`,
      { fieldSelector: `metadata.name=${name}` },
      (_type, object: { status?: { disks?: DiskStatusEntry[] } }) => {
        if (object.status?.disks) entries.push(structuredClone(object.status.disks));
      },
      () => undefined,
    );
    return { entries, stop: () => request.abort() };
  }

  function diskRequest(owner: { name: string }, pointId: string, parentPointId: string | null, rp: RecoveryPoint, base: RecoveryPoint | undefined, index: number): DiskRequestInput {
    const disk = vm.disks[index];
    if (!disk) throw new Error(`no disk ${index}`);
    return {
      apiVersion: 'sendense.io/mover-request/v1',
      kind: 'disk',
      run: { namespace, name: owner.name },
      prism: { endpoint },
      repository: { path: repositoryPath },
      vm: { uuid: vm.uuid, name: vm.name, clusterUuid: vm.cluster.uuid },
      pointId,
      parentPointId,
      createdAt: new Date().toISOString(),
      recoveryPoint: rp,
      disk,
      statusIndex: index,
      ...(base ? { base: { recoveryPoint: base, diskUuid: disk.uuid, sizeBytes: disk.sizeBytes } } : {}),
      initiatorName,
      progressIntervalSeconds: 0.5,
    };
  }

  async function createRecoveryPoint(pointId: string): Promise<RecoveryPoint> {
    return prism.createRecoveryPoint({ vm, name: recoveryPointName(pointId), consistency: Consistency.Crash, requestId: randomUUID() });
  }

  /** One backup through Jobs: disk Jobs, then the commit Job. Returns the commit result and the status history. */
  async function backupThroughJobs(runName: string, parent?: { pointId: string; rp: RecoveryPoint }, options: { rerunDisk0?: boolean } = {}) {
    const owner = await createRun(runName);
    const pointId = newPointId();
    const rp = await createRecoveryPoint(pointId);
    const history = await watchDiskStatus(runName);
    try {
      const jobs = vm.disks.map((d) => buildDiskJob(owner, diskRequest(owner, pointId, parent?.pointId ?? null, rp, parent?.rp, d.index), environment));
      for (const job of jobs) await batch.createNamespacedJob({ namespace, body: job });
      for (const job of jobs) {
        const name = job.metadata?.name ?? '';
        const outcome = await waitForJob(name);
        expect(outcome, await kubelet.run(name)?.terminationMessage()).toBe('Complete');
      }
      if (options.rerunDisk0 && jobs[0]) {
        // A disk Job started again for the same point (e.g. after a drain) finds the finished disk and copies nothing.
        const name = jobs[0].metadata?.name ?? '';
        await batch.deleteNamespacedJob({ name, namespace, propagationPolicy: 'Background' });
        while ((await batch.listNamespacedJob({ namespace })).items.some((j) => j.metadata?.name === name)) await sleep(100);
        await batch.createNamespacedJob({ namespace, body: jobs[0] });
        expect(await waitForJob(name)).toBe('Complete');
      }
      const diskResults = await Promise.all(
        jobs.map(async (job) => DiskJobResultSchema.parse(JSON.parse((await kubelet.run(job.metadata?.name ?? '')?.terminationMessage()) ?? 'null'))),
      );
      const commit = buildCommitJob(
        owner,
        {
          apiVersion: 'sendense.io/mover-request/v1',
          kind: 'commit',
          run: { namespace, name: runName },
          prism: { endpoint },
          repository: { path: repositoryPath },
          vm: { uuid: vm.uuid, name: vm.name, clusterUuid: vm.cluster.uuid },
          pointId,
          diskIndexes: vm.disks.map((d) => d.index),
          typeReason: 'first backup',
          vmConfig: vm,
          consistency: { requested: 'crash', obtained: rp.consistency },
          recoveryPoint: { id: rp.id, generation: rp.generation, disks: rp.disks },
          supersededRecoveryPointIds: parent ? [parent.rp.id] : [],
          retention: { keepLast: 5 },
        },
        environment,
      );
      await batch.createNamespacedJob({ namespace, body: commit });
      const commitName = commit.metadata?.name ?? '';
      const outcome = await waitForJob(commitName);
      const message = (await kubelet.run(commitName)?.terminationMessage()) ?? 'null';
      expect(outcome, message).toBe('Complete');
      return { pointId, rp, diskResults, commit: CommitJobResultSchema.parse(JSON.parse(message)), history: history.entries };
    } finally {
      history.stop();
    }
  }

  async function expectRestoredEqualsSim(pointId: string): Promise<void> {
    for (const disk of vm.disks) {
      const out = join(work, `restored-${pointId}-${disk.index}.raw`);
      await restoreDisk({ repo: join(repoHostDir, repositoryPath), vm: vm.uuid, point: pointId, diskIndex: disk.index, out, format: 'raw' });
      const { stdout } = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, await sim.diskPath(vm.name, disk.index)]);
      expect(stdout).toContain('Images are identical');
      await rm(out);
    }
  }

  async function expectNothingOrphaned(): Promise<void> {
    const state = await sim.admin.state();
    expect(state.volumeGroups).toEqual([]);
    expect(state.iscsiTargets).toEqual([]);
  }

  beforeAll(async () => {
    const binaries = await requireTestbedBinaries();
    [sim, testbed] = await Promise.all([startSim({ api: 'v4', vms: 1, disksPerVm: 2, diskSize: '32MiB' }), startTestbed({ rbac: true })]);
    const caPem = await readFile(sim.caFile, 'utf8');
    endpoint = sim.endpoint;
    prism = createPrismClient({ endpoint, username: sim.username, password: sim.password, caPem }, { logger });
    vm = await prism.findVm('vm-0001');
    work = await mkdtemp(join(tmpdir(), 'export-jobs-'));
    repoHostDir = join(work, 'pvc-backups');
    await run('mkdir', ['-p', repoHostDir]);

    await run(binaries.kubectl, ['--kubeconfig', testbed.kubeconfigAdmin, 'apply', '-f', defaultCrdDir]);
    await run(binaries.kubectl, [
      '--kubeconfig',
      testbed.kubeconfigAdmin,
      'wait',
      '--for=condition=Established',
      '--timeout=60s',
      ...customResourceKinds.map((k) => `crd/${k.plural}.${apiGroup}`),
    ]);
    admin = new KubeConfig();
    admin.loadFromFile(testbed.kubeconfigAdmin);
    const core = admin.makeApiClient(CoreV1Api);
    const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
    batch = admin.makeApiClient(BatchV1Api);
    objects = admin.makeApiClient(CustomObjectsApi);
    await core.createNamespace({ body: { metadata: { name: namespace } } });
    // The mover's rights, exactly as the design lists them: nothing else.
    await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: moverServiceAccount } } });
    await rbac.createNamespacedRole({
      namespace,
      body: {
        metadata: { name: moverServiceAccount },
        rules: [
          { apiGroups: [apiGroup], resources: ['vmbackupruns'], verbs: ['get'] },
          { apiGroups: [apiGroup], resources: ['vmbackupruns/status'], verbs: ['get', 'patch'] },
        ],
      },
    });
    await rbac.createNamespacedRoleBinding({
      namespace,
      body: {
        metadata: { name: moverServiceAccount },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: moverServiceAccount },
        subjects: [{ kind: 'ServiceAccount', name: moverServiceAccount, namespace }],
      },
    });
    await core.createNamespacedSecret({ namespace, body: { metadata: { name: 'prism-credentials' }, stringData: { username: sim.username, password: sim.password } } });
    await core.createNamespacedSecret({ namespace, body: { metadata: { name: 'prism-ca' }, stringData: { 'ca.crt': caPem } } });
    environment = {
      image: 'sendense-nutanix:test',
      credentialsSecret: { name: 'prism-credentials', usernameKey: 'username', passwordKey: 'password' },
      caSecret: { name: 'prism-ca', key: 'ca.crt' },
      repositoryClaim: 'backups',
    };
    kubelet = await startKubelet({
      kubeconfigAdmin: testbed.kubeconfigAdmin,
      namespace,
      persistentVolumes: { backups: repoHostDir },
      kubeconfigFor: (sa, ns) => testbed.kubeconfigFor(sa, ns),
      extraEnv: { LOG_LEVEL: 'warn' },
    });
  }, 180_000);

  afterAll(async () => {
    await kubelet?.stop();
    await prism?.close();
    await Promise.all([sim?.stop(), testbed?.stop()]);
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('a full, then an incremental, each through one Job per disk and a commit Job; restores equal the simulator', async () => {
    const full = await backupThroughJobs('full-run', undefined, { rerunDisk0: true });
    expect(full.commit.type).toBe('full');
    expect(full.diskResults.map((r) => r.reused)).toEqual([true, false]);
    for (const result of full.diskResults) {
      expect(result.overlay).toBe(false);
      expect(result.transferredBytes).toBeGreaterThan(0);
    }
    // Progress reached the run's status before the final figures: some entry below 100 % with the copy's total.
    for (const disk of vm.disks) {
      const states = full.history.map((entries) => entries[disk.index]);
      expect(states.some((s) => s?.diskUUID === disk.uuid && s.progressPercent !== undefined && s.progressPercent < 100 && (s.changedBytes ?? 0) > 0)).toBe(true);
      expect(states.at(-1)?.progressPercent).toBe(100);
    }
    const finalRun = vmBackupRun.parse(await objects.getNamespacedCustomObject({ ...runs, name: 'full-run' }));
    expect(finalRun.status?.disks?.map((d) => d.transferredBytes)).toEqual(full.diskResults.map((r) => r.transferredBytes));
    expect(finalRun.status?.backupType).toBe('Full');
    expect(finalRun.status?.totals?.transferredBytes).toBe(full.diskResults.reduce((sum, r) => sum + r.transferredBytes, 0));
    await expectRestoredEqualsSim(full.pointId);
    await expectNothingOrphaned();

    await sim.admin.write(vm.name, 0, 5, 11);
    const incremental = await backupThroughJobs('incremental-run', { pointId: full.pointId, rp: full.rp });
    expect(incremental.commit.type).toBe('incremental');
    expect(incremental.commit.parentPointId).toBe(full.pointId);
    expect(incremental.commit.deletedRecoveryPointIds).toEqual([full.rp.id]);
    expect(incremental.diskResults.map((r) => r.overlay)).toEqual([true, true]);
    expect(incremental.diskResults[1]?.transferredBytes).toBe(0);
    await expectRestoredEqualsSim(incremental.pointId);
    await expectNothingOrphaned();
    expect(await prism.getRecoveryPoint(full.rp.id)).toBeUndefined();

    const report = await verifyRepository(join(repoHostDir, repositoryPath), { checksums: true });
    expect(report.issues).toEqual([]);
    expect((await listPoints(join(repoHostDir, repositoryPath))).map((p) => p.pointId)).toEqual([full.pointId, incremental.pointId]);
    await prism.deleteRecoveryPoint(incremental.rp.id);
  }, 300_000);

  it("the mover's status patch is refused for a disk at the wrong index, and the mover's account cannot patch specs", async () => {
    const owner = await createRun('guarded-run');
    const moverKubeconfig = await testbed.kubeconfigFor(moverServiceAccount, namespace);
    const moverConfig = new KubeConfig();
    moverConfig.loadFromFile(moverKubeconfig);
    const writer = kubeRunStatusWriter({ namespace, name: owner.name }, KubeApi.fromKubeconfig(moverKubeconfig));
    const signal = AbortSignal.timeout(30_000);
    const [disk0, disk1] = vm.disks;
    await expect(writer.patchStatus(diskStatusPatch(0, disk1?.uuid ?? '', { progressPercent: 50 }), signal)).rejects.toMatchObject({ code: 'CONFLICT' });
    await writer.patchStatus(diskStatusPatch(0, disk0?.uuid ?? '', { progressPercent: 50 }), signal);
    const status = vmBackupRun.parse(await objects.getNamespacedCustomObject({ ...runs, name: owner.name })).status;
    expect(status?.disks?.map((d) => d.progressPercent)).toEqual([50, undefined]);
    const moverObjects = moverConfig.makeApiClient(CustomObjectsApi);
    await expect(moverObjects.patchNamespacedCustomObject({ ...runs, name: owner.name, body: { spec: { type: 'full' } } }, mergePatchOptions())).rejects.toMatchObject({ code: 403 });
  }, 120_000);

  it('a disk Job whose recovery point is gone fails with a reason; the cleanup Job removes the staging folder', async () => {
    const owner = await createRun('broken-run');
    const pointId = newPointId();
    const rp = await createRecoveryPoint(pointId);
    await prism.deleteRecoveryPoint(rp.id);
    const job = buildDiskJob(owner, diskRequest(owner, pointId, null, rp, undefined, 0), environment);
    await batch.createNamespacedJob({ namespace, body: job });
    const name = job.metadata?.name ?? '';
    expect(await waitForJob(name)).toBe('Failed');
    const exitCode = await kubelet.run(name)?.exited;
    expect(exitCode).not.toBe(0);
    const failure = TerminationMessageSchema.parse(JSON.parse((await kubelet.run(name)?.terminationMessage()) ?? 'null'));
    expect(failure.kind).toBe('failure');
    // The mover wrote its reason into the run's disk entry too (no Pod reading needed).
    const status = vmBackupRun.parse(await objects.getNamespacedCustomObject({ ...runs, name: owner.name })).status;
    expect(failure.kind === 'failure' && status?.disks?.[0]?.failureReason).toContain(failure.kind === 'failure' ? failure.message : '-');
    const vmDirPath = join(repoHostDir, repositoryPath, vm.cluster.uuid, vm.uuid);
    expect(await readdir(vmDirPath)).toContain(`.staging-${pointId}`);

    const cleanup: V1Job = buildCleanupJob(
      owner,
      { apiVersion: 'sendense.io/mover-request/v1', kind: 'cleanup', run: { namespace, name: owner.name }, repository: { path: repositoryPath }, vm: { uuid: vm.uuid, name: vm.name, clusterUuid: vm.cluster.uuid }, pointId },
      environment,
    );
    await batch.createNamespacedJob({ namespace, body: cleanup });
    expect(await waitForJob(cleanup.metadata?.name ?? '')).toBe('Complete');
    expect(await readdir(vmDirPath)).not.toContain(`.staging-${pointId}`);
    await expectNothingOrphaned();
  }, 180_000);
});
