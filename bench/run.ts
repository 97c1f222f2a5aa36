/**
 * The benchmarks of issue 5 (`make bench`), through the real flow: the Prism simulator's generated disk, its
 * recovery points exported as an iSCSI LUN by tgtd (v4) or as the snapshot file (v3), qemu-nbd, our mover and
 * the repository, durable at commit. Peers copy the same export (the same qemu-nbd over the same recovery
 * point) into a durable qcow2. Then incrementals after 5 % changes beside `dd` of the changed data bytes, and
 * restores from chains of several depths.
 * Contenders alternate within each round; figures are medians. Prints a table, writes bench/out/<time>.json.
 *
 *   node bench/run.ts [--size 4GiB] [--runs 3] [--depths 1,8,30] [--seed 1] [--dir DIR] [--quick]
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { startSim } from '../test/support/sim.ts';
import { backupVm, type BackupRequest } from '../src/engine/backup.ts';
import { serveDiskExport } from '../src/engine/disk-source.ts';
import { createLogger } from '../src/lib/log.ts';
import { parseSize } from '../src/lib/size.ts';
import { copyDisk } from '../src/mover/copy-disk.ts';
import { tuningFor } from '../src/mover/tiers.ts';
import { RegionType, type Region } from '../src/mover/types.ts';
import { createPrismClient } from '../src/prism/client.ts';
import { Consistency, type PrismClient } from '../src/prism/types.ts';
import { restoreDisk, verifyRepository, type RestorePoint } from '../src/repository/index.ts';
import { ddDirect, dropFromPageCache, GiB, machineFacts, median, MiB, nbdcopyToQcow2, nbdUri, qemuImgConvert, sampleLoad, sh, timed, type Timing } from './contenders.ts';

const { values } = parseArgs({
  options: {
    size: { type: 'string' },
    runs: { type: 'string' },
    depths: { type: 'string' },
    seed: { type: 'string', default: '1' },
    'change-percent': { type: 'string', default: '5' },
    'chain-change-percent': { type: 'string', default: '1' },
    dir: { type: 'string', default: tmpdir() },
    quick: { type: 'boolean', default: false },
  },
});
const args = z
  .object({
    size: z.string().optional(),
    runs: z.coerce.number().int().min(1).max(9).optional(),
    depths: z
      .string()
      .regex(/^\d+(,\d+)*$/, '--depths: comma-separated chain depths, e.g. 1,8,30')
      .optional(),
    seed: z.coerce.number().int().min(0),
    'change-percent': z.coerce.number().positive().max(100),
    'chain-change-percent': z.coerce.number().positive().max(100),
    dir: z.string(),
    quick: z.boolean(),
  })
  .parse(values);
const sizeText = args.size ?? (args.quick ? '256MiB' : '4GiB');
const sizeBytes = parseSize(sizeText, '--size');
const runs = args.runs ?? (args.quick ? 1 : 3);
const depths = (args.depths ?? (args.quick ? '1,3' : '1,8,30')).split(',').map(Number).sort((a, b) => a - b);
const changePercent = args['change-percent'];
const vm = 'vm-0001'; // odd index: its only disk is exactly --size (even ones get an unaligned tail)
const initiatorName = `iqn.2026-11.io.sendense:bench-${hostname()}`;
const logger = createLogger({ level: 'warn', name: 'bench' });
const log = (line: string) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${line}`);
const round3 = (x: number) => Number(x.toFixed(3));

interface Series {
  name: string;
  /** `source`: reading the export alone, nothing written (the ceiling the source sets). */
  kind: 'ours' | 'peer' | 'limit' | 'source';
  /** Which export it reads: the v4 iSCSI LUN or the v3 snapshot file (null: reads nothing). */
  source: 'iscsi' | 'file' | null;
  /** Bytes of data the contender moved (allocated bytes for a full). */
  dataBytes: number;
  timings: Timing[];
  /** Untimed, before each run: removes the previous run's output. */
  reset?: () => Promise<unknown>;
}

/** Allocation of the generated disk, block by block (64 KiB, the simulator's unit): zero, a repeated 4 KiB pattern, or other data. */
async function analyseDisk(file: string) {
  const MapSchema = z.array(z.object({ start: z.number(), length: z.number(), data: z.boolean(), zero: z.boolean() }));
  const map = MapSchema.parse(JSON.parse(await sh('qemu-img', ['map', '--output=json', '-f', 'raw', file])));
  const block = 64 * 1024;
  const counts = { zeroBlocks: 0, patternBlocks: 0, randomBlocks: 0, randomRuns: 0 };
  const zero = Buffer.alloc(block);
  const buf = Buffer.alloc(16 * MiB);
  const handle = await open(file, 'r');
  try {
    for (const extent of map.filter((e) => e.data)) {
      let previousRandomEnd = -1;
      for (let at = extent.start; at < extent.start + extent.length; at += buf.length) {
        const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, extent.start + extent.length - at), at);
        for (let o = 0; o < bytesRead; o += block) {
          const b = buf.subarray(o, Math.min(o + block, bytesRead));
          if (b.equals(zero.subarray(0, b.length))) counts.zeroBlocks++;
          else if (isRepeated4K(b)) counts.patternBlocks++;
          else {
            counts.randomBlocks++;
            if (previousRandomEnd !== at + o) counts.randomRuns++;
            previousRandomEnd = at + o + b.length;
          }
        }
      }
    }
  } finally {
    await handle.close();
  }
  const allocatedBytes = map.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
  const share = (blocks: number) => Number(((blocks * block) / sizeBytes).toFixed(3));
  return {
    sizeBytes,
    allocatedBytes,
    holeBytes: sizeBytes - allocatedBytes,
    share: { random: share(counts.randomBlocks), pattern: share(counts.patternBlocks), writtenZero: share(counts.zeroBlocks), hole: Number(((sizeBytes - allocatedBytes) / sizeBytes).toFixed(3)) },
    meanRandomRunKiB: counts.randomRuns ? Math.round((counts.randomBlocks * 64) / counts.randomRuns) : 0,
  };
}

function isRepeated4K(b: Buffer): boolean {
  if (b.length < 8192 || b.length % 4096) return false;
  const first = b.subarray(0, 4096);
  for (let o = 4096; o < b.length; o += 4096) if (!b.subarray(o, o + 4096).equals(first)) return false;
  return true;
}

const uniqueBytes = (blocks: Array<{ offset: number; length: number }>) => {
  const seen = new Map<number, number>();
  for (const b of blocks) seen.set(b.offset, Math.max(seen.get(b.offset) ?? 0, b.length));
  return [...seen.values()].reduce((n, l) => n + l, 0);
};

const load = sampleLoad();
const startedAt = new Date();
const work = await mkdtemp(path.join(args.dir, 'bench-'));
const sim = await startSim({ vms: 1, disksPerVm: 1, diskSize: sizeText, seed: args.seed, iscsiAcl: 'initiator' });
const caPem = await readFile(sim.caFile, 'utf8');
const connection = { endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem };
const prismFor: Record<'v4' | 'v3', PrismClient> = {
  v4: createPrismClient(connection, { logger, generation: 'v4' }),
  v3: createPrismClient(connection, { logger, generation: 'v3' }),
};
const repoFor = { v4: path.join(work, 'repo-v4'), v3: path.join(work, 'repo-v3') };
const backup = (api: 'v4' | 'v3', mode: BackupRequest['mode']) => backupVm(prismFor[api], { repo: repoFor[api], vm, mode, consistency: 'crash', initiatorName, logger });

try {
  const machine = await machineFacts(work);
  log(`${machine.nproc} cpus, ${machine.memoryGiB} GiB, ${machine.kernel}, ${machine.qemu}; work dir ${work} on ${machine.disk.device} (${machine.disk.fstype})`);
  const generation = await timed(() => sim.diskPath(vm, 0));
  const diskFile = await sim.diskPath(vm, 0);
  const disk = await analyseDisk(diskFile);
  log(`generated ${sizeText} in ${generation.seconds.toFixed(1)} s: ${(disk.allocatedBytes / GiB).toFixed(2)} GiB allocated; shares ${JSON.stringify(disk.share)}`);

  // The peers' source: one recovery point, exported once as an iSCSI LUN, served by the same qemu-nbd as ours.
  const prism = prismFor.v4;
  const theVm = await prism.findVm(vm);
  const peerRp = await prism.createRecoveryPoint({ vm: theVm, name: 'bench-peers', consistency: Consistency.Crash, requestId: randomUUID() });
  const peerDisk = peerRp.disks[0]!;
  const regions: Region[] = [];
  for await (const r of prism.changedRegions({ recoveryPoint: peerRp, disk: peerDisk })) regions.push(r);
  const planDataBytes = regions.filter((r) => r.type === RegionType.Regular).reduce((n, r) => n + r.length, 0);
  const peerExport = await prism.exportDisk({ recoveryPoint: peerRp, disk: peerDisk, initiatorName });
  const peerSource = await serveDiskExport(peerExport, initiatorName);
  const peerOut = path.join(work, 'peer.qcow2');
  // The v3 snapshot file of the same moment, only to measure how fast each kind of export can be read.
  const fileRp = await prismFor.v3.createRecoveryPoint({ vm: theVm, name: 'bench-read-ceiling', consistency: Consistency.Crash, requestId: randomUUID() });
  const fileExport = await prismFor.v3.exportDisk({ recoveryPoint: fileRp, disk: fileRp.disks[0]!, initiatorName });
  const fileSource = await serveDiskExport(fileExport, initiatorName);
  const readOnly = (socketPath: string) => () => sh('nbdcopy', ['-C', '1', '-R', '4', '--request-size=2097152', nbdUri(socketPath), 'null:']);
  const dataBytes = planDataBytes;
  let v3FullPoint: RestorePoint | undefined;
  /** Seconds of the disk copy inside each backup (the rest is recovery point, export, qemu-nbd start, commit). */
  const copySeconds: Record<'v4' | 'v3', number[]> = { v4: [], v3: [] };
  const fullBackup = async (api: 'v4' | 'v3') => {
    const result = await backup(api, 'full');
    copySeconds[api].push(result.point.manifest.disks[0]!.stats.durationMs / 1000);
    return result.point;
  };

  const sources = { iscsi: { label: 'iSCSI export', server: peerSource }, file: { label: 'snapshot file', server: fileSource } } as const;
  const onSource = (source: keyof typeof sources): Array<Series & { run: () => Promise<unknown> }> => {
    const { label, server } = sources[source];
    const reset = () => rm(peerOut, { force: true });
    return [
      { name: `ours: mover only (copyDisk), ${label}`, kind: 'ours', source, dataBytes, timings: [], reset, run: () => copyDisk({ source: { socketPath: server.socketPath }, exportName: server.exportName, regions, sizeBytes, target: { path: peerOut }, ...tuningFor('ssd') }) },
      { name: `qemu-img convert -W -m 2 -O qcow2 (+ sync), ${label}`, kind: 'peer', source, dataBytes, timings: [], reset, run: () => qemuImgConvert(server.socketPath, peerOut) },
      { name: `qemu-img convert -W -m 2 -t none -O qcow2, ${label}`, kind: 'peer', source, dataBytes, timings: [], reset, run: () => qemuImgConvert(server.socketPath, peerOut, ['-t', 'none']) },
      { name: `nbdcopy -C1 -R4 1M → qemu-nbd qcow2 (--flush), ${label}`, kind: 'peer', source, dataBytes, timings: [], reset, run: () => nbdcopyToQcow2(server.socketPath, peerOut, sizeBytes, work) },
      { name: `read only: ${label} → qemu-nbd → nbdcopy null:`, kind: 'source', source, dataBytes, timings: [], run: readOnly(server.socketPath) },
    ];
  };
  const fulls: Array<Series & { run: () => Promise<unknown> }> = [
    { name: 'ours: backup full, v4 (RP → iSCSI/tgtd → qemu-nbd → mover → repo)', kind: 'ours', source: 'iscsi', dataBytes, timings: [], reset: () => rm(repoFor.v4, { recursive: true, force: true }), run: () => fullBackup('v4') },
    ...onSource('iscsi'),
    { name: 'dd oflag=direct conv=fsync of the allocated bytes', kind: 'limit', source: null, dataBytes, timings: [], reset: () => rm(path.join(work, 'dd.bin'), { force: true }), run: () => ddDirect(path.join(work, 'dd.bin'), dataBytes) },
    { name: 'ours: backup full, v3 (snapshot file → qemu-nbd → mover → repo)', kind: 'ours', source: 'file', dataBytes, timings: [], reset: () => rm(repoFor.v3, { recursive: true, force: true }), run: async () => (v3FullPoint = await fullBackup('v3')) },
    ...onSource('file'),
  ];
  for (let round = 0; round < runs; round++) {
    // Rotate the order each round so no contender always follows the same neighbour.
    for (let k = 0; k < fulls.length; k++) {
      const c = fulls[(k + round) % fulls.length]!;
      // The simulator's storage shares this disk only because it runs here: it is idle before each timing.
      const t = await timed(c.run, async () => {
        await c.reset?.();
        await sim.admin.settle();
      });
      c.timings.push(t);
      log(`full round ${round + 1}: ${c.name}: ${t.seconds.toFixed(2)} s, cpu ${t.cpuSeconds.toFixed(2)} s`);
    }
  }
  await rm(path.join(work, 'dd.bin'), { force: true });
  // Our mover's image of the same export is a correct copy (checked once, outside the timings).
  await fulls[1]!.reset?.();
  await fulls[1]!.run();
  await sh('qemu-img', ['check', '-q', peerOut]);
  await sh('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', diskFile, peerOut]);
  await rm(peerOut, { force: true });
  await Promise.all([peerSource.stop(), fileSource.stop()]);
  await Promise.all([peerExport.release(), fileExport.release()]);
  await Promise.all([prism.deleteRecoveryPoint(peerRp.id), prismFor.v3.deleteRecoveryPoint(fileRp.id)]);

  // Incrementals: the guest writes N % of the disk in random 64 KiB blocks, then each repository takes one.
  type IncrementalRun = Timing & { changedBytes: number; changedZeroBytes: number; transferredBytes: number; copySeconds: number };
  const incrementals: Record<'v4' | 'v3', IncrementalRun[]> = { v4: [], v3: [] };
  /** `dd oflag=direct` of each round's changed data bytes: the disk's limit for what an incremental must write. */
  const incrementalDd: Timing[] = [];
  const ddIncrementalFile = path.join(work, 'dd-incremental.bin');
  const writeSeconds: number[] = [];
  const chainPoints: RestorePoint[] = [];
  for (let round = 0; round < runs; round++) {
    let report: Awaited<ReturnType<typeof sim.admin.write>> | undefined;
    const w = await timed(async () => (report = await sim.admin.write(vm, 0, changePercent, 1000 + round)));
    writeSeconds.push(w.seconds);
    const changedBytes = uniqueBytes(report!.blocks);
    const changedZeroBytes = uniqueBytes(report!.blocks.filter((b) => b.zero));
    const order = (['v4', 'v3', 'dd'] as const).map((_, k, all) => all[(k + round) % all.length]!);
    for (const api of order) {
      if (api === 'dd') {
        const t = await timed(() => ddDirect(ddIncrementalFile, changedBytes - changedZeroBytes), async () => {
          await rm(ddIncrementalFile, { force: true });
          await sim.admin.settle();
        });
        incrementalDd.push(t);
        log(`incremental round ${round + 1}: dd of the changed data bytes: ${t.seconds.toFixed(2)} s`);
        continue;
      }
      let transferredBytes = 0;
      let copySeconds = 0;
      const t = await timed(async () => {
        const result = await backup(api, 'incremental');
        transferredBytes = result.point.manifest.disks[0]!.stats.transferredBytes;
        copySeconds = result.point.manifest.disks[0]!.stats.durationMs / 1000;
        if (api === 'v3') chainPoints.push(result.point);
      }, () => sim.admin.settle());
      incrementals[api].push({ ...t, changedBytes, changedZeroBytes, transferredBytes, copySeconds });
      log(`incremental ${api} round ${round + 1}: ${t.seconds.toFixed(2)} s, ${(transferredBytes / MiB).toFixed(1)} MiB transferred of ${(changedBytes / MiB).toFixed(1)} MiB changed (guest write ${w.seconds.toFixed(1)} s)`);
    }
  }

  await rm(ddIncrementalFile, { force: true });

  // Chains: the v3 repository (its full, the incrementals above, then small changes) grows to the deepest depth.
  const maxDepth = depths.at(-1)!;
  const pointAtDepth = [v3FullPoint!, ...chainPoints];
  for (let depth = pointAtDepth.length + 1; depth <= maxDepth; depth++) {
    await sim.admin.write(vm, 0, args['chain-change-percent'], 2000 + depth);
    pointAtDepth.push((await backup('v3', 'incremental')).point);
    if (depth % 5 === 0) log(`chain depth ${depth}`);
  }
  // The chain's incrementals also add data, so depth N restores more bytes than depth 1: a full of the deepest
  // point's content (the live disk, unwritten since) in the v4 repository isolates the cost of depth itself.
  const fullOfDeepest = (await backup('v4', 'full')).point;
  const imageOf = (point: RestorePoint) => path.join(point.dir, point.manifest.disks[0]!.image);
  const restoreOut = path.join(work, 'restored.raw');
  const restoreCase = (label: string, repo: string, point: RestorePoint, images: string[]) => ({ label, repo, point, images, timings: [] as Timing[], direct: [] as Timing[], verify: [] as Timing[] });
  const restores = [
    ...depths.map((depth) => restoreCase(`depth ${depth}`, repoFor.v3, pointAtDepth[depth - 1]!, pointAtDepth.slice(0, depth).map(imageOf))),
    restoreCase(`full of depth ${maxDepth}'s content`, repoFor.v4, fullOfDeepest, [imageOf(fullOfDeepest)]),
  ];
  for (let round = 0; round < runs; round++) {
    for (let k = 0; k < restores.length; k++) {
      const r = restores[(k + round) % restores.length]!;
      // Every contender reads the chain from the disk, not from what the previous one left in the page cache.
      await rm(restoreOut, { force: true });
      await dropFromPageCache(r.images);
      await sim.admin.settle();
      const t = await timed(() => restoreDisk({ repo: r.repo, vm, point: r.point.pointId, diskIndex: 0, out: restoreOut, format: 'raw' }));
      r.timings.push(t);
      // Candidate: the same chain flattened with parallel, out-of-order, O_DIRECT writes (durable: qemu-img flushes at close).
      await rm(restoreOut, { force: true });
      await dropFromPageCache(r.images);
      const d = await timed(() => sh('qemu-img', ['convert', '-W', '-m', '8', '-t', 'none', '-f', 'qcow2', '-O', 'raw', imageOf(r.point), restoreOut]));
      r.direct.push(d);
      // The restore verifies the chain beside its copy; alone, to show its share.
      await dropFromPageCache(r.images);
      const v = await timed(() => verifyRepository(r.repo, { vm, point: r.point.pointId, disk: 0, checksums: false }));
      r.verify.push(v);
      log(`restore ${r.label} round ${round + 1}: ${t.seconds.toFixed(2)} s (cpu ${t.cpuSeconds.toFixed(2)} s), its verify alone ${v.seconds.toFixed(2)} s; qemu-img convert -W -m 8 -t none ${d.seconds.toFixed(2)} s`);
    }
  }
  // The deepest restore is the live disk now (no write since its backup): bit-exact.
  await rm(restoreOut, { force: true });
  await restoreDisk({ repo: repoFor.v3, vm, point: pointAtDepth[maxDepth - 1]!.pointId, diskIndex: 0, out: restoreOut, format: 'raw' });
  await sh('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', restoreOut, diskFile]);
  await rm(restoreOut, { force: true });

  // Figures.
  const loadAverage = load.stop();
  const secondsOf = (s: { timings: Timing[] }) => median(s.timings.map((t) => t.seconds));
  const cpuOf = (s: { timings: Timing[] }) => median(s.timings.map((t) => t.cpuSeconds));
  const ddSeconds = secondsOf(fulls.find((f) => f.kind === 'limit')!);
  const diskLimitBps = dataBytes / ddSeconds;
  const medianByOwner = (timings: Timing[]) =>
    Object.fromEntries([...new Set(timings.flatMap((t) => Object.keys(t.cpuByOwner)))].map((owner) => [owner, round3(median(timings.map((t) => t.cpuByOwner[owner] ?? 0)))]));
  const peersOf = (source: Series['source']) => fulls.filter((f) => f.kind === 'peer' && f.source === source);
  const fullRows = fulls.map((f) => {
    const s = secondsOf(f);
    const peers = peersOf(f.source);
    return {
      name: f.name,
      kind: f.kind,
      medianSeconds: round3(s),
      medianCpuSeconds: round3(cpuOf(f)),
      logicalGiBps: f.kind === 'ours' || f.kind === 'peer' ? round3(sizeBytes / GiB / s) : null,
      dataGiBps: round3(f.dataBytes / GiB / s),
      ofDiskLimit: round3(f.dataBytes / s / diskLimitBps),
      source: f.source,
      bestPeerTimeOverThis: peers.length ? round3(Math.min(...peers.map(secondsOf)) / s) : null,
      peerTimeOverThis: Object.fromEntries(peers.map((p) => [p.name, round3(secondsOf(p) / s)])),
      runsSeconds: f.timings.map((t) => round3(t.seconds)),
      medianCpuByOwner: medianByOwner(f.timings),
    };
  });
  const copyRows = (['v4', 'v3'] as const).map((api) => ({ api, medianCopySeconds: round3(median(copySeconds[api])), dataGiBps: round3(dataBytes / GiB / median(copySeconds[api])) }));
  const incrementalDdSeconds = median(incrementalDd.map((t) => t.seconds));
  const incrementalRows = (['v4', 'v3'] as const).map((api) => {
    const list = incrementals[api];
    const s = median(list.map((t) => t.seconds));
    const fullSeconds = secondsOf(fulls.find((f) => f.name.startsWith(`ours: backup full, ${api}`))!);
    return {
      api,
      medianSeconds: round3(s),
      medianCpuSeconds: round3(median(list.map((t) => t.cpuSeconds))),
      changedBytes: list.map((t) => t.changedBytes),
      changedZeroBytes: list.map((t) => t.changedZeroBytes),
      transferredBytes: list.map((t) => t.transferredBytes),
      transferredOverChanged: round3(Math.max(...list.map((t) => t.transferredBytes / t.changedBytes))),
      timeOverFull: round3(s / fullSeconds),
      medianCopySeconds: round3(median(list.map((t) => t.copySeconds))),
      copyOverFullCopy: round3(median(list.map((t) => t.copySeconds)) / median(copySeconds[api])),
      /** The copy's data rate as a share of dd's for the same bytes. */
      copyOfDiskLimit: round3(incrementalDdSeconds / median(list.map((t) => t.copySeconds))),
      /** The least `time / full` any backup could reach here: only writing its bytes at dd's rate, nothing else. */
      diskLimitOverFull: round3(incrementalDdSeconds / fullSeconds),
      runsSeconds: list.map((t) => round3(t.seconds)),
    };
  });
  const sameContent = restores.at(-1)!;
  const restoreRows = restores.map((r) => ({
    restore: r.label,
    medianSeconds: round3(secondsOf(r)),
    medianCpuSeconds: round3(cpuOf(r)),
    logicalGiBps: round3(sizeBytes / GiB / secondsOf(r)),
    overDepth1: round3(secondsOf(r) / secondsOf(restores[0]!)),
    overFullOfSameContent: round3(secondsOf(r) / secondsOf(sameContent)),
    runsSeconds: r.timings.map((t) => round3(t.seconds)),
    medianCpuByOwner: medianByOwner(r.timings),
    verifyAloneSeconds: round3(median(r.verify.map((t) => t.seconds))),
    candidateConvertDirectSeconds: round3(median(r.direct.map((t) => t.seconds))),
    candidateOverDepth1: round3(median(r.direct.map((t) => t.seconds)) / median(restores[0]!.direct.map((t) => t.seconds))),
  }));
  const deepest = restoreRows.at(-2)!;
  const targets = [
    ...(['v4', 'v3'] as const).flatMap((api) => {
      const row = fullRows.find((r) => r.name.startsWith(`ours: backup full, ${api}`))!;
      const vsPeer = row.bestPeerTimeOverThis ?? 0;
      return [
        { target: `full (${api}) ≥ 2× faster than the best peer on the same export`, value: vsPeer, limit: 2, met: vsPeer >= 2 },
        { target: `full (${api}) ≥ 85 % of dd oflag=direct for the allocated bytes`, value: row.ofDiskLimit, limit: 0.85, met: row.ofDiskLimit >= 0.85 },
      ];
    }),
    ...incrementalRows.flatMap((i) => [
      { target: `incremental (${i.api}) transfers ≤ 1.1 × changed bytes`, value: i.transferredOverChanged, limit: 1.1, met: i.transferredOverChanged <= 1.1 },
      { target: `incremental (${i.api}) takes ≤ 10 % of the full's time`, value: i.timeOverFull, limit: 0.1, met: i.timeOverFull <= 0.1 },
      { target: `incremental (${i.api}) copy phase ≤ 10 % of the full's copy phase`, value: i.copyOverFullCopy, limit: 0.1, met: i.copyOverFullCopy <= 0.1 },
    ]),
    { target: `restore ${deepest.restore} ≤ 1.5 × ${restoreRows[0]!.restore}`, value: deepest.overDepth1, limit: 1.5, met: deepest.overDepth1 <= 1.5 },
    { target: `restore ${deepest.restore} ≤ 1.5 × a full of the same content`, value: deepest.overFullOfSameContent, limit: 1.5, met: deepest.overFullOfSameContent <= 1.5 },
    { target: `same for the candidate (convert -W -m 8 -t none)`, value: deepest.candidateOverDepth1, limit: 1.5, met: deepest.candidateOverDepth1 <= 1.5 },
  ];
  const result = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    options: { size: sizeText, runs, depths, seed: args.seed, changePercent, chainChangePercent: args['chain-change-percent'] },
    machine,
    loadAverage,
    note: 'other processes may run on this machine during the benchmark; see loadAverage',
    disk: { ...disk, planDataBytes, generationSeconds: round3(generation.seconds) },
    guestWriteSeconds: writeSeconds.map(round3),
    full: fullRows,
    fullCopyOnly: copyRows,
    incremental: incrementalRows,
    incrementalDiskLimit: { medianSeconds: round3(incrementalDdSeconds), runsSeconds: incrementalDd.map((t) => round3(t.seconds)) },
    restore: restoreRows,
    targets,
  };

  const table = (head: string[], rows: Array<Array<string | number | null>>) =>
    [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.map((c) => c ?? '-').join(' | ')} |`)].join('\n');
  console.log(`\n${sizeText} disk, ${(disk.allocatedBytes / GiB).toFixed(2)} GiB allocated (random ${disk.share.random}, pattern ${disk.share.pattern}, written zero ${disk.share.writtenZero}, hole ${disk.share.hole}); ${runs} runs; load average ${loadAverage.min}-${loadAverage.max} (median ${loadAverage.median})\n`);
  console.log(table(['full backup', 'median s', 'CPU s', 'GiB/s logical', 'GiB/s data', 'of dd limit', 'best peer time / this'], fullRows.map((r) => [r.name, r.medianSeconds, r.medianCpuSeconds, r.logicalGiBps, r.dataGiBps, r.ofDiskLimit, r.bestPeerTimeOverThis])));
  const tgtdOf = (r: (typeof fullRows)[number]) => r.medianCpuByOwner.tgtd ?? 0;
  console.log(`tgtd (the simulated iSCSI target) CPU s, median: ${fullRows.filter((r) => r.source === 'iscsi').map((r) => `${r.name.split(',')[0]} ${tgtdOf(r)}`).join('; ')}`);
  console.log(`copy phase alone inside the full backups: ${copyRows.map((c) => `${c.api} ${c.medianCopySeconds} s (${c.dataGiBps} GiB/s data)`).join(', ')}`);
  console.log();
  console.log(table(['incremental', 'median s', 'CPU s', 'changed MiB (of which zero)', 'transferred MiB', 'transferred / changed', 'time / full', 'copy s', 'copy / full copy', 'copy of dd limit', 'dd of its bytes / full'], incrementalRows.map((r) => [r.api, r.medianSeconds, r.medianCpuSeconds, `${(median(r.changedBytes) / MiB).toFixed(1)} (${(median(r.changedZeroBytes) / MiB).toFixed(1)})`, (median(r.transferredBytes) / MiB).toFixed(1), r.transferredOverChanged, r.timeOverFull, r.medianCopySeconds, r.copyOverFullCopy, r.copyOfDiskLimit, r.diskLimitOverFull])));
  console.log(`dd oflag=direct conv=fsync of the changed data bytes: ${round3(incrementalDdSeconds)} s (median)`);
  console.log();
  console.log(table(['restore (raw, durable, cold cache)', 'median s', 'CPU s', 'GiB/s logical', 'time / depth 1', 'time / full of same content', 'its verify alone, s', 'candidate: convert -W -m 8 -t none, s', 'candidate / its depth 1'], restoreRows.map((r) => [r.restore, r.medianSeconds, r.medianCpuSeconds, r.logicalGiBps, r.overDepth1, r.overFullOfSameContent, r.verifyAloneSeconds, r.candidateConvertDirectSeconds, r.candidateOverDepth1])));
  console.log();
  console.log(table(['target', 'measured', 'limit', 'met'], targets.map((t) => [t.target, t.value, t.limit, t.met ? 'yes' : 'NO'])));
  const outDir = path.join(import.meta.dirname, 'out');
  mkdirSync(outDir, { recursive: true });
  const outFile = path.join(outDir, `${startedAt.toISOString().replaceAll(':', '-')}.json`);
  writeFileSync(outFile, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`\nJSON: ${outFile}`);
} finally {
  await Promise.all(Object.values(prismFor).map((p) => p.close()));
  await sim.stop();
  await rm(work, { recursive: true, force: true });
}
