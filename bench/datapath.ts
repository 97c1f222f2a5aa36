/**
 * Data-path benchmark (not a test): a generated raw disk exported by qemu-nbd, copied durably into a qcow2
 * by our mover, by `qemu-img convert -W -m 2`, and by `nbdcopy` into a qemu-nbd qcow2 target, alternating,
 * median of several runs; plus `dd oflag=direct` of the same number of data bytes (the disk's limit), and an
 * incremental after a 5 % change. Prints a table and JSON.
 *
 *   node bench/datapath.ts [--size 4GiB] [--runs 3] [--dir DIR] [--sweep]
 */
import { mkdtemp, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { parseSize } from '../src/lib/size.ts';
import { AllocationFlag, NbdClient } from '../src/nbd/client.ts';
import { startQemuNbd, type QemuNbdServer } from '../src/nbd/qemu-nbd.ts';
import { copyDisk } from '../src/mover/copy-disk.ts';
import { changeSampleDisk, createSampleDisk } from '../src/mover/sample-disk.ts';
import { RegionType, type Region } from '../src/mover/types.ts';
import { ddDirect, GiB, median, MiB, nbdcopyToQcow2, qemuImgConvert, sh, timed as timedRun } from './contenders.ts';

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '4GiB' },
    runs: { type: 'string', default: '3' },
    dir: { type: 'string', default: os.tmpdir() },
    sweep: { type: 'boolean', default: false },
  },
});
const args = z
  .object({ size: z.string(), runs: z.coerce.number().int().min(1).max(9), dir: z.string(), sweep: z.boolean() })
  .parse(values);
const sizeBytes = parseSize(args.size, '--size');

interface Row {
  name: string;
  seconds: number[];
  cpuSeconds: number[];
  dataBytes: number;
}

let lastCpu = 0;
/** Wall seconds of fn; its CPU seconds (this process tree, including the source qemu-nbd) are left in lastCpu. */
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = await timedRun(fn);
  lastCpu = t.cpuSeconds;
  return t.seconds;
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
const raw = path.join(dir, 'source.raw');
const out = path.join(dir, 'out.qcow2');
try {
  console.error(`generating ${args.size} sample disk in ${dir} …`);
  const layout = await createSampleDisk(raw, { sizeBytes, seed: 'bench', unitBytes: MiB, maxRunUnits: 16 });
  const server = await startQemuNbd({ image: raw, format: 'raw', shared: 8 });
  const regions = await allocatedRegions(server);
  const dataBytes = regions.filter((r) => r.type === RegionType.Regular).reduce((n, r) => n + r.length, 0);
  console.error(`data ${(dataBytes / GiB).toFixed(2)} GiB of ${(sizeBytes / GiB).toFixed(2)} GiB; ${os.cpus().length} cpus, ${os.cpus()[0]?.model}`);

  const ours = (opts: { clusterSize?: number; requestSize?: number; inFlight?: number; syncEveryBytes?: number; direct?: boolean } = {}) => async () => {
    await rm(out, { force: true });
    return timed(() => copyDisk({ source: { socketPath: server.socketPath }, regions, sizeBytes, target: { path: out }, ...opts }));
  };
  const ddFile = path.join(dir, 'dd.bin');
  const contendersOfPeers = {
    qemuImgConvert: () => timed(() => qemuImgConvert(server.socketPath, out)),
    nbdcopy: () => timed(() => nbdcopyToQcow2(server.socketPath, out, sizeBytes, dir)),
    ddDirect: async () => {
      const t = await timed(() => ddDirect(ddFile, dataBytes));
      await rm(ddFile, { force: true });
      return t;
    },
  };
  const contenders: Array<[string, () => Promise<number>]> = [
    ['ours (copyDisk → qcow2, fsync)', ours()],
    ['qemu-img convert -W -m 2 (+sync)', contendersOfPeers.qemuImgConvert],
    ['nbdcopy -C1 -R4 1M → qemu-nbd qcow2 (--flush)', contendersOfPeers.nbdcopy],
    ['dd oflag=direct of the data bytes', contendersOfPeers.ddDirect],
  ];
  if (args.sweep) {
    for (const [requestSize, inFlight] of [[1, 2], [2, 2], [4, 2], [1, 4], [4, 4], [8, 2]] as const) {
      contenders.push([`ours R${inFlight} × ${requestSize} MiB`, ours({ requestSize: requestSize * MiB, inFlight })]);
    }
    contenders.push(['ours cluster 1 MiB', ours({ clusterSize: MiB })]);
    contenders.push(['ours cluster 256 KiB', ours({ clusterSize: 256 * 1024 })]);
    contenders.push(['ours page cache (no O_DIRECT)', ours({ direct: false })]);
    contenders.push(['ours page cache, no background sync', ours({ direct: false, syncEveryBytes: 0 })]);
  }
  const rows: Row[] = contenders.map(([name]) => ({ name, seconds: [], cpuSeconds: [], dataBytes }));
  for (let r = 0; r < args.runs; r++) {
    for (const [i, [name, fn]] of contenders.entries()) {
      const s = await fn();
      rows[i]!.seconds.push(s);
      rows[i]!.cpuSeconds.push(lastCpu);
      console.error(`run ${r + 1}: ${name}: ${s.toFixed(3)} s, cpu ${lastCpu.toFixed(2)} s, load ${os.loadavg()[0]!.toFixed(1)}`);
    }
  }

  // Correctness of our image, once.
  await rm(out, { force: true });
  await ours()();
  await sh('qemu-img', ['check', '-q', out]);
  await sh('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', raw, out]);
  const full = path.join(dir, 'full.qcow2');
  await rename(out, full);

  // Incremental: 5 % of the disk in random 64 KiB blocks; qemu-nbd serves the file live.
  const changed = await changeSampleDisk(raw, sizeBytes, { seed: 'bench-5pct', fraction: 0.05 });
  const changedBytes = changed.reduce((n, r) => n + r.length, 0);
  const incr = path.join(dir, 'incr.qcow2');
  const incSeconds: number[] = [];
  const incCpu: number[] = [];
  let transferred = 0;
  for (let r = 0; r < args.runs; r++) {
    await rm(incr, { force: true });
    incSeconds.push(
      await timed(async () => {
        const res = await copyDisk({ source: { socketPath: server.socketPath }, regions: changed, sizeBytes, target: { path: incr, backing: { relativePath: 'full.qcow2', sizeBytes } } });
        transferred = res.stats.transferredBytes;
      }),
    );
    incCpu.push(lastCpu);
  }
  await sh('qemu-img', ['check', '-q', incr]);
  await sh('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', raw, incr]);
  rows.push({ name: `ours incremental, 5 % in 64 KiB blocks (${changed.length} regions)`, seconds: incSeconds, cpuSeconds: incCpu, dataBytes: changedBytes });
  await server.stop();

  const ddMedian = median(rows.find((r) => r.name.startsWith('dd'))!.seconds);
  const oursMedian = median(rows[0]!.seconds);
  const table = rows.map((row) => {
    const s = median(row.seconds);
    return {
      name: row.name,
      medianSeconds: Number(s.toFixed(3)),
      medianCpuSeconds: Number(median(row.cpuSeconds).toFixed(2)),
      logicalGiBps: row.name.startsWith('dd') ? null : Number((sizeBytes / GiB / s).toFixed(2)),
      dataGiBps: Number((row.dataBytes / GiB / s).toFixed(2)),
      vsOurs: Number((s / oursMedian).toFixed(2)),
      ofDiskLimit: Number((row.dataBytes / s / (dataBytes / ddMedian)).toFixed(2)),
      runs: row.seconds.map((x) => Number(x.toFixed(3))),
    };
  });
  console.log(`load average at the end: ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  console.log('| contender | median s | CPU s (all processes) | GiB/s logical | GiB/s data | time vs ours | data rate vs dd |');
  console.log('|---|---|---|---|---|---|---|');
  for (const t of table) console.log(`| ${t.name} | ${t.medianSeconds} | ${t.medianCpuSeconds} | ${t.logicalGiBps ?? '-'} | ${t.dataGiBps} | ${t.vsOurs} | ${t.ofDiskLimit} |`);
  console.log(
    JSON.stringify(
      { machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, memGiB: Math.round(os.totalmem() / GiB) }, sizeBytes, dataBytes: layout.dataBytes, allocatedBytes: dataBytes, incremental: { changedBytes, transferredBytes: transferred }, results: table },
      null,
      2,
    ),
  );
} finally {
  await rm(dir, { recursive: true, force: true });
}
