/**
 * `sendense-nutanix sim …`: runs the Prism simulator, or (`disk-path`, `write`) works on a simulator's data dir.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { z } from 'zod';
import { createLogger } from '../src/lib/log.ts';
import { parseSize } from '../src/lib/size.ts';
import { adminCall, simInfoSchema, type SimInfo } from './admin-client.ts';
import { adminRoutes } from './admin.ts';
import { faultRulesSchema } from './faults.ts';
import { Tgtd } from './iscsi.ts';
import { parseTaskDurations } from './tasks.ts';
import { adminUser, ApiMode, Sim, viewerUser } from './server.ts';
import { generateInventory, liveDiskPath, loadState, saveState } from './state.ts';
import { ensureTls } from './tls.ts';
import { v3Routes } from './v3.ts';
import { exportVolumeGroup, v4Routes } from './v4.ts';
import { World } from './world.ts';

const log = createLogger({ name: 'prism-sim' });

/** `15m`, `30s`, `500ms`, `2h` → milliseconds. */
export function parseDuration(text: string, field: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new Error(`${field}: "${text}" is not a duration (use e.g. 500ms, 30s, 15m, 1h)`);
  const factor = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * factor);
}

const credentialsSchema = z.object({ password: z.string(), adminToken: z.string() });

async function credentials(dataDir: string): Promise<z.infer<typeof credentialsSchema>> {
  const path = join(dataDir, 'credentials.json');
  if (existsSync(path)) return credentialsSchema.parse(JSON.parse(await readFile(path, 'utf8')));
  const created = { password: `Sim-${randomBytes(9).toString('base64url')}`, adminToken: randomBytes(24).toString('base64url') };
  await writeFile(path, JSON.stringify(created), { mode: 0o600 });
  return created;
}

const serveSchema = z.object({
  data: z.string().min(1),
  listen: z.string().regex(/^127\.\d+\.\d+\.\d+:\d+$/, 'must be a loopback IPv4 address and port, e.g. 127.0.0.1:9440'),
  vms: z.coerce.number().int().min(1).max(100_000),
  disksPerVm: z.coerce.number().int().min(1).max(16),
  diskSize: z.string(),
  seed: z.coerce.number().int(),
  api: z.enum([ApiMode.V3, ApiMode.V4]),
  sessionTtl: z.string(),
  clusters: z.coerce.number().int().min(1).max(64),
  crtPageRegions: z.coerce.number().int().min(1),
  taskDuration: z.string(),
  faults: z.string().optional(),
  iscsi: z.enum(['on', 'off']),
  iscsiAcl: z.enum(['initiator', 'any']),
});

async function serve(raw: unknown): Promise<void> {
  const options = serveSchema.parse(raw);
  const dataDir = resolve(options.data);
  await mkdir(dataDir, { recursive: true });
  const [listenIp, portText] = options.listen.split(':') as [string, string];
  let state = await loadState(dataDir);
  if (!state) {
    state = generateInventory({
      vms: options.vms,
      disksPerVm: options.disksPerVm,
      diskSizeBytes: parseSize(options.diskSize, '--disk-size'),
      seed: options.seed,
      clusters: options.clusters,
    });
    await saveState(dataDir, state);
  }
  const secrets = await credentials(dataDir);
  const tls = await ensureTls(dataDir, listenIp);
  const world = new World(dataDir, state);
  // A snapshot whose task was cut short by a previous stop never completed: remove it, as its failed task would.
  for (const unfinished of state.snapshots.filter((s) => s.state !== 'COMPLETE')) await world.deleteSnapshot(unfinished);
  const sim = new Sim(
    {
      dataDir,
      api: options.api,
      listenIp,
      port: Number(portText),
      sessionTtlMs: parseDuration(options.sessionTtl, '--session-ttl'),
      taskDurations: parseTaskDurations(options.taskDuration, parseDuration),
      crtPageRegions: options.crtPageRegions,
      iscsiAcl: options.iscsiAcl,
      password: secrets.password,
      adminToken: secrets.adminToken,
    },
    world,
  );
  if (options.faults) sim.faults.add(faultRulesSchema.parse(JSON.parse(options.faults)));
  if (options.iscsi === 'on') {
    sim.tgtd = await Tgtd.start();
    // Targets do not outlive a tgtd: attached volume groups are exported again by the new one.
    for (const vg of state.volumeGroups) await exportVolumeGroup(sim, vg);
  }
  sim.addRoutes(adminRoutes(sim));
  sim.addRoutes(v3Routes(sim));
  if (options.api === ApiMode.V4) sim.addRoutes(v4Routes(sim));
  const address = await sim.listen(tls);
  const info: SimInfo = {
    endpoint: `https://${listenIp}:${address.port}`,
    username: adminUser,
    password: secrets.password,
    caFile: tls.caFile,
    adminToken: secrets.adminToken,
    viewerUsername: viewerUser,
    dataServicesIp: sim.tgtd?.ip,
    api: options.api,
    pid: process.pid,
  };
  const infoPath = join(dataDir, 'sim.json');
  await writeFile(`${infoPath}.tmp`, JSON.stringify(info, null, 2), { mode: 0o600 });
  await rename(`${infoPath}.tmp`, infoPath);
  log.info({ endpoint: info.endpoint, api: options.api, vms: state.vms.length, dataServicesIp: info.dataServicesIp }, 'Prism simulator ready');

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'Prism simulator stopping');
    await sim.close();
    await sim.tgtd?.stop();
    await world.flush();
    await rm(infoPath, { force: true });
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

async function runningSim(dataDir: string): Promise<SimInfo | undefined> {
  const path = join(dataDir, 'sim.json');
  if (!existsSync(path)) return undefined;
  const info = simInfoSchema.parse(JSON.parse(await readFile(path, 'utf8')));
  try {
    process.kill(info.pid, 0);
    return info;
  } catch {
    return undefined;
  }
}

async function openWorld(dataDir: string): Promise<World> {
  const state = await loadState(dataDir);
  if (!state) throw new Error(`${dataDir} holds no simulator state (state.json); start the simulator with --data ${dataDir} once`);
  return new World(dataDir, state);
}

const diskPathSchema = z.object({ data: z.string().min(1), vm: z.string().min(1), disk: z.coerce.number().int().min(0) });
const writeSchema = diskPathSchema.extend({ changedPercent: z.coerce.number().min(0).max(100), seed: z.coerce.number().int().optional() });

async function diskPath(raw: unknown): Promise<void> {
  const options = diskPathSchema.parse(raw);
  const dataDir = resolve(options.data);
  const info = await runningSim(dataDir);
  if (info) {
    const result = z.object({ path: z.string() }).parse(await adminCall({ ...info, caPem: await readFile(info.caFile, 'utf8') }, 'GET', `/_sim/vms/${encodeURIComponent(options.vm)}/disks/${options.disk}`));
    process.stdout.write(`${result.path}\n`);
    return;
  }
  const world = await openWorld(dataDir);
  const vm = world.vmByName(options.vm);
  if (!vm) throw new Error(`--vm: no VM named ${options.vm}`);
  const disk = world.diskByIndex(vm, options.disk);
  await world.ensureDisk(vm, disk);
  process.stdout.write(`${liveDiskPath(dataDir, vm.uuid, disk.uuid)}\n`);
}

async function write(raw: unknown): Promise<void> {
  const options = writeSchema.parse(raw);
  const dataDir = resolve(options.data);
  const info = await runningSim(dataDir);
  let result: unknown;
  if (info) {
    result = await adminCall({ ...info, caPem: await readFile(info.caFile, 'utf8') }, 'POST', `/_sim/vms/${encodeURIComponent(options.vm)}/disks/${options.disk}/write`, {
      changedPercent: options.changedPercent,
      seed: options.seed,
    });
  } else {
    const world = await openWorld(dataDir);
    const vm = world.vmByName(options.vm);
    if (!vm) throw new Error(`--vm: no VM named ${options.vm}`);
    result = await world.writeDisk(vm, options.disk, options.changedPercent, options.seed);
    await world.flush();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function main(argv: string[]): void {
  const program = new Command('sendense-nutanix sim').description('Nutanix Prism simulator (v4 + v3, CRT, iSCSI)').showHelpAfterError();
  const fail = (err: unknown): void => {
    const message = err instanceof z.ZodError ? err.issues.map((i) => `--${i.path.join('.').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}: ${i.message}`).join('; ') : err instanceof Error ? err.message : String(err);
    process.stderr.write(`sim: ${message}\n`);
    process.exit(2);
  };
  program
    .command('serve', { isDefault: true })
    .description('run the simulator until SIGTERM/SIGINT')
    .requiredOption('--data <dir>', 'state directory')
    .option('--listen <ip:port>', 'listen address (port 0 = free port)', '127.0.0.1:9440')
    .option('--vms <n>', 'VMs to create on first start', '10')
    .option('--disks-per-vm <n>', 'real disks per VM', '2')
    .option('--disk-size <size>', 'size of every disk', '64MiB')
    .option('--seed <n>', 'seed of inventory and disk content', '1')
    .option('--api <v3|v4>', 'v4 = pc.2024.3 with v4 + v3; v3 = v3 only', 'v4')
    .option('--session-ttl <duration>', 'session cookie / JWT lifetime', '15m')
    .option('--clusters <n>', 'AOS clusters', '1')
    .option('--crt-page-regions <n>', 'max regions per changed-regions response', '1000')
    .option('--task-duration <duration>', 'time each task stays RUNNING before its work: one duration, or Operation=duration pairs (default=…)', '0ms')
    .option('--faults <json>', 'initial fault rules (JSON array)')
    .option('--iscsi <on|off>', 'start tgtd for volume-group exports', 'on')
    .option('--iscsi-acl <initiator|any>', 'who may log in to an exported target', 'initiator')
    .action((opts: unknown) => serve(opts).catch(fail));
  program
    .command('disk-path')
    .description('print the live file of a VM disk')
    .requiredOption('--data <dir>')
    .requiredOption('--vm <name>')
    .requiredOption('--disk <index>')
    .action((opts: unknown) => diskPath(opts).catch(fail));
  program
    .command('write')
    .description('apply guest writes to a VM disk')
    .requiredOption('--data <dir>')
    .requiredOption('--vm <name>')
    .requiredOption('--disk <index>')
    .requiredOption('--changed-percent <p>')
    .option('--seed <n>')
    .action((opts: unknown) => write(opts).catch(fail));
  program.parse(argv);
}

if (import.meta.main) main(process.argv);

