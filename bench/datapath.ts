/**
 * Data-path benchmark (not a test). A generated raw disk exported by qemu-nbd is copied durably into a qcow2 by
 * our mover, by `qemu-img convert -W -m 2` (page cache + sync, and O_DIRECT), and by `nbdcopy` into a qemu-nbd
 * qcow2 target, next to `dd oflag=direct` of the same number of data bytes (the disk's limit). The incremental:
 * a qcow2 overlay over the disk with a few percent of random 64 KiB blocks changed (some written as zeros),
 * exported by qemu-nbd, is copied by our mover into an overlay of our full image, next to `qemu-img convert -B`
 * doing the same sparse copy from the overlay file (nbdcopy cannot copy only the changed blocks) and `dd` of the
 * changed data bytes. Contenders
 * alternate; every figure is the median of the runs. Prints a table and JSON.
 *
 *   node bench/datapath.ts [--mode both|full|incremental] [--size 4GiB] [--runs 3] [--change-percent 5]
 *                          [--zero-share 0.2] [--dir DIR] [--sweep] [--baseline TREE]
 *
 * --baseline TREE adds our full and incremental as of an earlier commit, alternating with today's, e.g.
 *   git archive <commit> src | tar -x -C /tmp/base && ln -s $PWD/node_modules /tmp/base/node_modules
 */
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { parseSize } from '../src/lib/size.ts';
import { AllocationFlag, NbdClient } from '../src/nbd/client.ts';
import { startQemuNbd, type QemuNbdServer } from '../src/nbd/qemu-nbd.ts';
import { copyDisk, type CopyDiskOptions } from '../src/mover/copy-disk.ts';
import { changeSampleDisk, createSampleDisk } from '../src/mover/sample-disk.ts';
import { RegionType, type Region } from '../src/mover/types.ts';
import { ddDirect, GiB, median, MiB, nbdcopyToQcow2, qemuImgConvert, sampleLoad, sh, timed as timedRun } from './contenders.ts';

const { values } = parseArgs({
  options: {
    mode: { type: 'string', default: 'both' },
    size: { type: 'string', default: '4GiB' },
    runs: { type: 'string', default: '3' },
    'change-percent': { type: 'string', default: '5' },
    'zero-share': { type: 'string', default: '0.2' },
    dir: { type: 'string', default: os.tmpdir() },
    sweep: { type: 'boolean', default: false },
    baseline: { type: 'string' },
  },
});
const args = z
  .object({
    mode: z.enum(['both', 'full', 'incremental']),
    size: z.string(),
    runs: z.coerce.number().int().min(1).max(9),
    'change-percent': z.coerce.number().gt(0).max(50),
    'zero-share': z.coerce.number().min(0).max(1),
    dir: z.string(),
    sweep: z.boolean(),
    baseline: z.string().optional(),
  })
  .parse(values);
const sizeBytes = parseSize(args.size, '--size');
const withFullPeers = args.mode !== 'incremental';
const withIncremental = args.mode !== 'full';
const CopyDiskModuleSchema = z.object({ copyDisk: z.function() });
const baselineCopyDisk = args.baseline
  ? (CopyDiskModuleSchema.parse(await import(path.resolve(args.baseline, 'src/mover/copy-disk.ts'))).copyDisk as typeof copyDisk)
  : undefined;

type Tuning = Pick<CopyDiskOptions, 'clusterSize' | 'requestSize' | 'inFlight' | 'syncEveryBytes' | 'direct'>;

interface Contender {
  name: string;
  /** Bytes of data the contender copies (the rate column). */
  dataBytes: number;
  incremental: boolean;
  run: () => Promise<unknown>;
  seconds: number[];
  cpuSeconds: number[];
}

async function allocatedRegions(server: QemuNbdServer): Promise<Region[]> {
  const client = await NbdClient.connect({ endpoint: { socketPath: server.socketPath } });
  const regions: Region[] = [];
  for await (const e of client.extents()) {
    regions.push({ offset: e.offset, length: e.length, type: e.flags & AllocationFlag.Zero ? RegionType.Zeroed : RegionType.Regular });
  }
  await client.close();
  return regions;
}

const dir = await mkdtemp(path.join(args.dir, 'bench-datapath-'));
const base = path.join(dir, 'base.raw');
const out = path.join(dir, 'out.qcow2');
const full = path.join(dir, 'full.qcow2');
const changedSource = path.join(dir, 'changed.qcow2');
const incr = path.join(dir, 'incr.qcow2');
const peerIncr = path.join(dir, 'peer-incr.qcow2');
const servers: QemuNbdServer[] = [];
const load = sampleLoad();
try {
  console.error(`generating ${args.size} sample disk in ${dir} …`);
  const layout = await createSampleDisk(base, { sizeBytes, seed: 'bench', unitBytes: MiB, maxRunUnits: 16 });
  const server = await startQemuNbd({ image: base, format: 'raw', shared: 8 });
  servers.push(server);
  const regions = await allocatedRegions(server);
  const dataBytes = regions.filter((r) => r.type === RegionType.Regular).reduce((n, r) => n + r.length, 0);
  console.error(`data ${(dataBytes / GiB).toFixed(2)} GiB of ${(sizeBytes / GiB).toFixed(2)} GiB; ${os.cpus().length} cpus, ${os.cpus()[0]?.model}`);

  const ddFile = path.join(dir, 'dd.bin');
  /** Every contender's output, removed untimed before each run (freeing GiBs is the file system's work, not a copy's). */
  const removeOutputs = () => Promise.all([out, ddFile, incr, peerIncr].map((file) => rm(file, { force: true })));
  const oursFull = (tuning: Tuning = {}, copy = copyDisk) => () =>
    copy({ source: { socketPath: server.socketPath }, regions, sizeBytes, target: { path: out }, ...tuning });
  const contenders: Contender[] = [];
  const add = (name: string, bytes: number, incremental: boolean, run: () => Promise<unknown>) =>
    contenders.push({ name, dataBytes: bytes, incremental, run, seconds: [], cpuSeconds: [] });
  add('ours full (copyDisk → qcow2, fsync)', dataBytes, false, oursFull());
  if (baselineCopyDisk) add('baseline full (copyDisk of --baseline)', dataBytes, false, oursFull({}, baselineCopyDisk));
  if (withFullPeers) {
    add('qemu-img convert -W -m 2 (+sync)', dataBytes, false, () => qemuImgConvert(server.socketPath, out));
    add('qemu-img convert -W -m 2 -t none', dataBytes, false, () => qemuImgConvert(server.socketPath, out, ['-t', 'none']));
    add('nbdcopy -C1 -R4 1M → qemu-nbd qcow2 (--flush)', dataBytes, false, () => nbdcopyToQcow2(server.socketPath, out, sizeBytes, dir));
    add('dd oflag=direct of the data bytes', dataBytes, false, () => ddDirect(ddFile, dataBytes));
    if (args.sweep) {
      for (const [requestSize, inFlight] of [[1, 4], [4, 2], [4, 4], [8, 2]] as const) {
        add(`ours full ${inFlight} × ${requestSize} MiB`, dataBytes, false, oursFull({ requestSize: requestSize * MiB, inFlight }));
      }
      add('ours full, page cache (no O_DIRECT)', dataBytes, false, oursFull({ direct: false }));
    }
  }

  // Our full image, checked once; it is the backing file of the incrementals.
  await removeOutputs();
  await oursFull()();
  await sh('qemu-img', ['check', '-q', out]);
  await sh('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', base, out]);
  await copyFile(out, full);

  let changed: Region[] = [];
  let changedBytes = 0;
  let changedDataBytes = 0;
  let transferredBytes = 0;
  let oursIncrementalOnce: (() => Promise<void>) | undefined;
  let peerIncrementalOnce: (() => Promise<unknown>) | undefined;
  if (withIncremental) {
    // The changed disk as a qcow2 overlay over the base holding exactly the changed blocks: the blocks are
    // written into a copy of the base, and a safe rebase from that copy onto the base keeps what differs.
    const live = path.join(dir, 'live.raw');
    await sh('cp', ['--sparse=always', base, live]);
    changed = await changeSampleDisk(live, sizeBytes, { seed: 'bench-change', fraction: args['change-percent'] / 100, zeroShare: args['zero-share'] });
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', live, '-F', 'raw', changedSource]);
    await sh('qemu-img', ['rebase', '-f', 'qcow2', '-b', base, '-F', 'raw', changedSource]);
    await rm(live);
    changedBytes = changed.reduce((n, r) => n + r.length, 0);
    changedDataBytes = changed.filter((r) => r.type === RegionType.Regular).reduce((n, r) => n + r.length, 0);
    const source = await startQemuNbd({ image: changedSource, format: 'qcow2', shared: 8 });
    servers.push(source);
    console.error(`changed ${(changedBytes / MiB).toFixed(1)} MiB in ${changed.length} regions (${(changedDataBytes / MiB).toFixed(1)} MiB data)`);
    const oursIncremental = (tuning: Tuning = {}, copy = copyDisk) => async () => {
      const result = await copy({ source: { socketPath: source.socketPath }, regions: changed, sizeBytes, target: { path: incr, backing: { relativePath: 'full.qcow2', sizeBytes } }, ...tuning });
      transferredBytes = result.stats.transferredBytes;
    };
    oursIncrementalOnce = oursIncremental();
    add(`ours incremental, ${args['change-percent']} % in 64 KiB blocks`, changedDataBytes, true, oursIncrementalOnce);
    if (baselineCopyDisk) add('baseline incremental (copyDisk of --baseline)', changedDataBytes, true, oursIncremental({}, baselineCopyDisk));
    peerIncrementalOnce = () => sh('qemu-img', ['convert', '-W', '-m', '2', '-t', 'none', '-f', 'qcow2', '-O', 'qcow2', '-B', 'full.qcow2', '-F', 'qcow2', changedSource, peerIncr]);
    add('qemu-img convert -W -m 2 -t none -B full (overlay file)', changedDataBytes, true, peerIncrementalOnce);
    // The disk's limit for the incremental's bytes: a small file has its own start-up and fsync costs.
    add('dd oflag=direct of the changed data bytes', changedDataBytes, true, () => ddDirect(ddFile, changedDataBytes));
    if (args.sweep) {
      for (const [requestSize, inFlight] of [[1, 4], [2, 8], [4, 4], [8, 2]] as const) {
        add(`ours incremental ${inFlight} × ${requestSize} MiB`, changedDataBytes, true, oursIncremental({ requestSize: requestSize * MiB, inFlight }));
      }
    }
  }

  for (let r = 0; r < args.runs; r++) {
    // Rotate the order each round so that no contender always runs right after the same one.
    for (let k = 0; k < contenders.length; k++) {
      const c = contenders[(k + r) % contenders.length]!;
      const t = await timedRun(c.run, removeOutputs);
      c.seconds.push(t.seconds);
      c.cpuSeconds.push(t.cpuSeconds);
      console.error(`run ${r + 1}: ${c.name}: ${t.seconds.toFixed(3)} s, cpu ${t.cpuSeconds.toFixed(2)} s, load ${os.loadavg()[0]!.toFixed(1)}`);
    }
  }

  if (withIncremental) {
    // Today's incremental and the peer's pass the check and equal the changed disk.
    await removeOutputs();
    await oursIncrementalOnce?.();
    await peerIncrementalOnce?.();
    for (const image of [incr, peerIncr]) {
      await sh('qemu-img', ['check', '-q', image]);
      await sh('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'qcow2', changedSource, image]);
    }
  }

  /** `dd` of the same kind: each copy is compared with the disk's limit for the bytes it copies. */
  const ddRowFor = (c: Contender) => contenders.find((d) => d.name.startsWith('dd') && d.incremental === c.incremental);
  const fullMedian = median(contenders[0]!.seconds);
  const table = contenders.map((c) => {
    const s = median(c.seconds);
    const ddRow = ddRowFor(c);
    return {
      name: c.name,
      medianSeconds: Number(s.toFixed(3)),
      medianCpuSeconds: Number(median(c.cpuSeconds).toFixed(2)),
      logicalGiBps: c.incremental || c.name.startsWith('dd') ? null : Number((sizeBytes / GiB / s).toFixed(2)),
      dataGiBps: Number((c.dataBytes / GiB / s).toFixed(2)),
      ofOursFull: Number((s / fullMedian).toFixed(3)),
      ofDiskLimit: ddRow ? Number((c.dataBytes / s / (ddRow.dataBytes / median(ddRow.seconds))).toFixed(2)) : null,
      runs: c.seconds.map((x) => Number(x.toFixed(3))),
    };
  });
  const loadAverage = load.stop();
  console.log(`load average (1 min) during the run: ${loadAverage.min}-${loadAverage.max}, median ${loadAverage.median}`);
  console.log('| contender | median s | CPU s (all processes) | GiB/s logical | GiB/s data | time / ours full | data rate / dd |');
  console.log('|---|---|---|---|---|---|---|');
  for (const t of table) console.log(`| ${t.name} | ${t.medianSeconds} | ${t.medianCpuSeconds} | ${t.logicalGiBps ?? '-'} | ${t.dataGiBps} | ${t.ofOursFull} | ${t.ofDiskLimit ?? '-'} |`);
  console.log(
    JSON.stringify(
      {
        machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, memGiB: Math.round(os.totalmem() / GiB) },
        loadAverage,
        sizeBytes,
        dataBytes: layout.dataBytes,
        allocatedBytes: dataBytes,
        incremental: withIncremental ? { regions: changed.length, changedBytes, changedDataBytes, transferredBytes } : undefined,
        results: table,
      },
      null,
      2,
    ),
  );
} finally {
  load.stop();
  await Promise.all(servers.map((s) => s.stop()));
  await rm(dir, { recursive: true, force: true });
}
