/**
 * The operator demo (`make demo`): a real kube-apiserver + etcd, the Helm chart installed, the Prism simulator,
 * the kubelet stand-in running export Jobs as local processes, the operator; then the example CRs of
 * manifests/examples/ are applied (credentials and endpoint pointed at the simulator), a "run now" makes a full
 * backup, the guest writes, a second one makes an incremental, `kubectl get ntnx,vmbp,vmbr` shows them, and the
 * restored disk is compared byte for byte with the simulator's.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { parseAllDocuments, stringify } from 'yaml';
import { z } from 'zod';
import { installChart } from '../test/packaging/chart.ts';
import { startKubelet } from '../test/support/kubelet.ts';
import { startOperatorProcess } from '../test/support/operator-process.ts';
import { startSim } from '../test/support/sim.ts';
import { startTestbed, testbedBinaries } from '../test/support/testbed.ts';

const run = promisify(execFile);
const root = join(import.meta.dirname, '..');
const bin = join(root, 'bin/sendense-nutanix');
const namespace = 'sendense-system';
const step = (text: string) => console.log(`\n\x1b[1m== ${text}\x1b[0m`);

const cleanups: (() => Promise<unknown>)[] = [];
async function cleanup(): Promise<void> {
  for (const undo of cleanups.reverse()) await undo().catch(() => undefined);
}

async function main(): Promise<void> {
  step('Start a real kube-apiserver + etcd (RBAC on) and install the Helm chart');
  const testbed = await startTestbed({ rbac: true });
  cleanups.push(() => testbed.stop());
  const chart = await installChart(testbed, { namespace, includeCrds: true });
  const { kubectl } = await testbedBinaries();
  const k = async (...args: string[]) => (await run(kubectl, ['--kubeconfig', testbed.kubeconfigAdmin, '-n', namespace, ...args])).stdout;
  const kubectlApply = (yamlText: string) =>
    new Promise<string>((resolve, reject) => {
      const child = execFile(kubectl, ['--kubeconfig', testbed.kubeconfigAdmin, '-n', namespace, 'apply', '-f', '-'], (err, stdout) => (err ? reject(err) : resolve(stdout)));
      child.stdin?.end(yamlText);
    });
  console.log(`installed into ${namespace}: ${chart.objects.length} objects`);

  step('Start the Prism simulator: 3 VMs with 2 disks of 256 MiB');
  const sim = await startSim({ vms: 3, disksPerVm: 2, diskSize: '256MiB' });
  cleanups.push(() => sim.stop());
  console.log(`Prism Central (simulated) at ${sim.endpoint}`);

  step('Apply manifests/examples/ (credentials and endpoint pointed at the simulator)');
  const examples = join(root, 'manifests/examples');
  const documents: Record<string, unknown>[] = [];
  for (const file of (await readdir(examples)).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const doc of parseAllDocuments(await readFile(join(examples, file), 'utf8'))) {
      const object = z.looseObject({ kind: z.string(), metadata: z.looseObject({ name: z.string() }) }).parse(doc.toJS());
      if (object.kind === 'Secret' && object.metadata.name === 'prism-credentials') object.stringData = { username: sim.username, password: sim.password };
      if (object.kind === 'Secret' && object.metadata.name === 'prism-ca') object.stringData = { 'ca.crt': sim.caPem };
      if (object.kind === 'NutanixCluster') object.spec = { ...z.looseObject({}).parse(object.spec), endpoint: sim.endpoint };
      documents.push(object);
    }
  }
  process.stdout.write(await kubectlApply(documents.map((d) => stringify(d)).join('---\n')));

  const repositoryDir = await mkdtemp(join(tmpdir(), 'sendense-demo-repository-'));
  cleanups.push(() => rm(repositoryDir, { recursive: true, force: true }));
  const kubelet = await startKubelet({
    kubeconfigAdmin: testbed.kubeconfigAdmin,
    namespace,
    persistentVolumes: { 'backup-repository': repositoryDir },
    kubeconfigFor: (sa, ns) => testbed.kubeconfigFor(sa, ns),
    extraEnv: { LOG_LEVEL: 'warn' },
  });
  cleanups.push(() => kubelet.stop());

  step('Start the operator under the chart\'s ServiceAccount');
  const operator = startOperatorProcess({ kubeconfig: await testbed.kubeconfigFor(chart.operatorServiceAccount, namespace), namespace, env: { LOG_LEVEL: 'warn' } });
  cleanups.push(async () => {
    operator.child.kill('SIGTERM');
    await new Promise((resolve) => operator.child.once('exit', resolve));
  });
  await k('wait', '--for=condition=Ready', 'ntnx/lab', '--timeout=90s');
  console.log(await k('get', 'ntnx'));

  const runNow = async (what: string): Promise<string> => {
    step(what);
    const created = await k('create', '-f', join(examples, 'run-now/vm-backup-run.yaml'), '-o', 'name');
    const name = created.trim().replace(/^.*\//, '');
    for (let last = ''; ; await sleep(1000)) {
      const phase = (await k('get', 'vmbr', name, '-o', 'jsonpath={.status.phase}')).trim();
      if (phase !== last) console.log(`${name}: ${phase || 'Pending'}`);
      last = phase;
      if (phase === 'Succeeded') return name;
      if (phase === 'Failed' || phase === 'PartiallyFailed') {
        throw new Error(`${name} ended ${phase}: ${await k('get', 'vmbr', name, '-o', 'jsonpath={.status.failureReason}')}\n${operator.output().slice(-3000)}`);
      }
    }
  };
  await runNow('Run now: the first backup of vm-0001 (a full)');
  step('The guest writes 5 % of disk 0');
  const written = await sim.admin.write('vm-0001', 0, 5);
  console.log(`${written.blocks.length} blocks of 64 KiB written, ${written.blocks.filter((b) => b.zero).length} of them zeros`);
  await runNow('Run now again: an incremental');

  step('kubectl get ntnx,vmbp,vmbr');
  console.log(await k('get', 'ntnx,vmbp,vmbr'));

  step('Restore disk 0 of the newest restore point and compare it with the simulator\'s disk');
  const repo = join(repositoryDir, 'nutanix/lab');
  console.log((await run(bin, ['points', '--repo', repo])).stdout);
  const out = join(repositoryDir, 'restored-disk0.raw');
  console.log((await run(bin, ['restore', '--repo', repo, '--vm', 'vm-0001', '--disk', '0', '--out', out])).stdout.trim());
  console.log((await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, await sim.diskPath('vm-0001', 0)])).stdout.trim());
  console.log((await run(bin, ['verify', '--repo', repo])).stdout.trim());
}

try {
  await main();
} catch (err) {
  console.error(`demo failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
