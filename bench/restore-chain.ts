/**
 * Restore benchmark without the simulator: a repository whose chain is written by our Qcow2Writer (as the
 * mover writes it) from a deterministic sample disk, then, per depth and round, `restoreDisk` (verify beside
 * the chain reader's copy, fsync, rename) against `qemu-img convert -W -m 8 -t none -O raw` of the same top
 * image, the previous restore (`qemu-img convert -O raw` + fsync) and `dd oflag=direct` of the bytes our
 * restore writes. A full point of the deepest point's content is restored too: the depth cost on equal data.
 * Every restore of the first round is compared with the sample disk as it was at that point. Before each
 * restore the chain's images are dropped from the page cache (`--warm` keeps them): a restore reads images
 * that were written with O_DIRECT, usually long ago.
 *
 *   node_modules/.bin/node bench/restore-chain.ts --size 1GiB --depths 1,8,30 --runs 3
 */
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { parseSize } from '../src/lib/size.ts';
import { createLogger } from '../src/lib/log.ts';
import { changeSampleDisk, createSampleDisk, mergeRegions } from '../src/mover/sample-disk.ts';
import { RegionType, type Region } from '../src/mover/types.ts';
import { Qcow2Writer, alignedBuffers } from '../src/qcow2/writer.ts';
import { flattenImage } from '../src/repository/flatten.ts';
import { beginPoint, restoreDisk, verifyRepository, type RestorePoint, type VmRef } from '../src/repository/index.ts';
import { vmConfig } from '../src/repository/test-repo.ts';
import { ddDirect, dropFromPageCache, GiB, machineFacts, median, MiB, sampleLoad, sh, timed, type Timing } from './contenders.ts';

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '1GiB' },
    runs: { type: 'string', default: '3' },
    depths: { type: 'string', default: '1,8,30' },
    seed: { type: 'string', default: '1' },
    dir: { type: 'string', default: tmpdir() },
    'skip-old': { type: 'boolean', default: false },
    'build-only': { type: 'boolean', default: false },
    warm: { type: 'boolean', default: false },
  },
});
const args = z
  .object({
    size: z.string(),
    runs: z.coerce.number().int().min(1).max(9),
    depths: z.string().regex(/^\d+(,\d+)*$/, '--depths: comma-separated chain depths, e.g. 1,8,30'),
    seed: z.string().min(1),
    dir: z.string(),
    'skip-old': z.boolean(),
    'build-only': z.boolean(),
    warm: z.boolean(),
  })
  .parse(values);
const sizeBytes = parseSize(args.size, '--size');
const depths = args.depths.split(',').map(Number).sort((a, b) => a - b);
const log = (line: string) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${line}`);
const round3 = (x: number) => Number(x.toFixed(3));
const logger = createLogger({ level: 'warn', name: 'bench' });
const CHUNK = 8 * MiB;

/** One point of disk 0 written by Qcow2Writer: REGULAR regions copied from the sample file, ZEROED ones as zero clusters. */
async function writePoint(vm: VmRef, parent: RestorePoint | undefined, sample: string, regions: Region[], buffer: Buffer): Promise<RestorePoint> {
  const staged = await beginPoint(vm, { parentPointId: parent?.pointId ?? null });
  try {
    const target = await staged.copyTarget(0, sizeBytes, { overlay: parent !== undefined });
    const writer = await Qcow2Writer.create({ path: target.path, sizeBytes, backing: target.backing ? { relativePath: target.backing.relativePath } : undefined });
    const source = await open(sample, 'r');
    let transferred = 0;
    let zero = 0;
    try {
      for (const region of regions) {
        if (region.type === RegionType.Zeroed) {
          if (parent) await writer.writeZeroes(region.offset, region.length);
          zero += region.length;
          continue;
        }
        for (let at = region.offset; at < region.offset + region.length; at += CHUNK) {
          const length = Math.min(CHUNK, region.offset + region.length - at);
          await source.read(buffer, 0, length, at);
          await writer.writeData(at, buffer.subarray(0, length));
          transferred += length;
        }
      }
      await writer.finalize();
    } catch (err) {
      await writer.abandon();
      throw err;
    } finally {
      await source.close();
    }
    await staged.writeDisk({
      index: 0,
      uuid: 'disk-0-uuid',
      logicalSizeBytes: sizeBytes,
      stats: { logicalBytes: sizeBytes, changedBytes: transferred + zero, transferredBytes: transferred, zeroBytes: zero, durationMs: 1, throughputBytesPerSec: 1 },
      checksums: [],
      zeroRanges: [],
    });
    return await staged.commit({
      type: parent ? 'incremental' : 'full',
      typeReason: parent ? 'bench chain' : 'bench full',
      vm: vmConfig(vm, [sizeBytes]),
      consistency: { requested: 'crash', obtained: 'CRASH_CONSISTENT' },
      recoveryPoint: { id: `rp-${staged.pointId}`, generation: 'v3', disks: [{ diskUuid: 'disk-0-uuid' }] },
    });
  } catch (err) {
    await staged.abort();
    throw err;
  }
}

const work = await mkdtemp(path.join(args.dir, 'bench-restore-'));
try {
  const facts = await machineFacts(work);
  const load = sampleLoad();
  const sample = path.join(work, 'sample.raw');
  const layout = await createSampleDisk(sample, { sizeBytes, seed: `restore-${args.seed}` });
  log(`sample disk: ${(sizeBytes / GiB).toFixed(2)} GiB, ${(layout.dataBytes / GiB).toFixed(2)} GiB data`);
  const vm: VmRef = { repo: path.join(work, 'repo'), clusterUuid: 'c0ffee00-0000-4000-8000-00000000bec4', vmUuid: 'a1b2c3d4-0000-4000-8000-00000000bec4' };
  await mkdir(vm.repo);
  const [buffer] = alignedBuffers(1, CHUNK);
  const chain: RestorePoint[] = [await writePoint(vm, undefined, sample, layout.runs, buffer!)];
  const referenceAt = new Map<number, string>();
  const keepReference = async (depth: number) => {
    if (!depths.includes(depth)) return;
    const copy = path.join(work, `reference-${depth}.raw`);
    await sh('cp', ['--sparse=always', sample, copy]);
    referenceAt.set(depth, copy);
  };
  await keepReference(1);
  // Which 64 KiB blocks of the sample hold data now: the regions a full of its current content copies.
  const BLOCK = 64 * 1024;
  const hasData = new Uint8Array(Math.ceil(sizeBytes / BLOCK));
  const mark = (regions: Region[]) => {
    for (const r of regions) hasData.fill(r.type === RegionType.Regular ? 1 : 0, r.offset / BLOCK, Math.ceil((r.offset + r.length) / BLOCK));
  };
  mark(layout.runs);
  // As bench/run.ts grows its chain: three 5 % incrementals (the measured ones there), then 1 % ones.
  for (let depth = 2; depth <= depths.at(-1)!; depth++) {
    const changed = await changeSampleDisk(sample, sizeBytes, { seed: `${args.seed}-${depth}`, fraction: depth <= 4 ? 0.05 : 0.01, zeroShare: 0.2 });
    chain.push(await writePoint(vm, chain.at(-1), sample, changed, buffer!));
    mark(changed);
    await keepReference(depth);
  }
  const deepest = depths.at(-1)!;
  const currentRegions = mergeRegions(
    Array.from(hasData, (d, i) => ({ offset: i * BLOCK, length: Math.min(BLOCK, sizeBytes - i * BLOCK), type: d ? RegionType.Regular : RegionType.Zeroed })),
  );
  const fullOfDeepest = await writePoint(vm, undefined, sample, currentRegions, buffer!);
  log(`chain of ${chain.length} points written, and a full of the depth-${deepest} content`);
  if (args['build-only']) {
    // For profiling by hand: the repository and the references stay; nothing is measured.
    console.log(JSON.stringify({ work, repo: vm.repo, vm: vm.vmUuid, points: chain.map((p) => p.dir), references: Object.fromEntries(referenceAt) }));
    process.exit(0);
  }

  const out = path.join(work, 'restored.raw');
  const newRow = (name: string, point: RestorePoint, images: string[], reference: string) => ({
    name,
    point,
    images,
    reference,
    ours: [] as Timing[],
    copyOnly: [] as Timing[],
    candidate: [] as Timing[],
    old: [] as Timing[],
    dd: [] as Timing[],
    verify: [] as Timing[],
    writtenBytes: 0,
    layers: 0,
  });
  const imageOf = (point: RestorePoint) => path.join(point.dir, 'disk-0.qcow2');
  const rows = [
    ...depths.map((depth) => newRow(`depth ${depth}`, chain[depth - 1]!, chain.slice(0, depth).map(imageOf), referenceAt.get(depth)!)),
    newRow(`full of depth ${deepest}'s content`, fullOfDeepest, [imageOf(fullOfDeepest)], referenceAt.get(deepest)!),
  ];
  const dropCache = async (images: string[]) => {
    if (!args.warm) await dropFromPageCache(images);
  };
  for (let round = 0; round < args.runs; round++) {
    for (let k = 0; k < rows.length; k++) {
      const row = rows[(k + round) % rows.length]!;
      const image = imageOf(row.point);
      await rm(out, { force: true });
      await dropCache(row.images);
      const ours = await timed(async () => {
        const result = await restoreDisk({ repo: vm.repo, vm: vm.vmUuid, point: row.point.pointId, diskIndex: 0, out, format: 'raw', logger });
        if (result.flatten.method !== 'chain-reader') throw new Error(`restore fell back to qemu-img: ${result.flatten.fallbackReason}`);
        row.writtenBytes = result.flatten.copied!.writtenBytes;
        row.layers = result.flatten.copied!.layers;
      });
      row.ours.push(ours);
      if (round === 0) await sh('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', out, row.reference]);
      await rm(out, { force: true });
      // The restore's copy without the verify beside it: what the chain costs the copy itself.
      await dropCache(row.images);
      row.copyOnly.push(await timed(() => flattenImage(image, out, 'raw', { logger })));
      await rm(out, { force: true });
      await dropCache(row.images);
      row.candidate.push(await timed(() => sh('qemu-img', ['convert', '-W', '-m', '8', '-t', 'none', '-f', 'qcow2', '-O', 'raw', image, out])));
      await rm(out, { force: true });
      if (!args['skip-old']) {
        await dropCache(row.images);
        row.old.push(await timed(() => sh('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, out]).then(() => sh('sync', ['-d', out]))));
        await rm(out, { force: true });
      }
      row.dd.push(await timed(() => ddDirect(out, row.writtenBytes)));
      await rm(out, { force: true });
      row.verify.push(await timed(() => verifyRepository(vm.repo, { vm: vm.vmUuid, point: row.point.pointId, disk: 0, checksums: false })));
      log(
        `${row.name} round ${round + 1}: ours ${ours.seconds.toFixed(2)} s (cpu ${ours.cpuSeconds.toFixed(2)}), its copy alone ${row.copyOnly.at(-1)!.seconds.toFixed(2)} s, convert -W -m 8 -t none ${row.candidate.at(-1)!.seconds.toFixed(2)} s` +
          `${row.old.length ? `, old restore ${row.old.at(-1)!.seconds.toFixed(2)} s` : ''}, dd ${row.dd.at(-1)!.seconds.toFixed(2)} s, verify alone ${row.verify.at(-1)!.seconds.toFixed(2)} s`,
      );
    }
  }
  const loadAverage = load.stop();
  const secondsOf = (t: Timing[]) => median(t.map((x) => x.seconds));
  const cpuOf = (t: Timing[]) => median(t.map((x) => x.cpuSeconds));
  const ours1 = secondsOf(rows[0]!.ours);
  const candidate1 = secondsOf(rows[0]!.candidate);
  const oursFull = secondsOf(rows.at(-1)!.ours);
  const candidateFull = secondsOf(rows.at(-1)!.candidate);
  const table = rows.map((row) => ({
    restore: row.name,
    layers: row.layers,
    oursSeconds: round3(secondsOf(row.ours)),
    oursCpuSeconds: round3(cpuOf(row.ours)),
    oursGiBps: round3(sizeBytes / GiB / secondsOf(row.ours)),
    oursOfDepth1: round3(secondsOf(row.ours) / ours1),
    oursOfFullSameContent: round3(secondsOf(row.ours) / oursFull),
    copyOnlySeconds: round3(secondsOf(row.copyOnly)),
    copyOnlyCpuSeconds: round3(cpuOf(row.copyOnly)),
    copyOnlyOfFullSameContent: round3(secondsOf(row.copyOnly) / secondsOf(rows.at(-1)!.copyOnly)),
    writtenGiB: round3(row.writtenBytes / GiB),
    ddSeconds: round3(secondsOf(row.dd)),
    ddOverOurs: round3(secondsOf(row.dd) / secondsOf(row.ours)),
    verifyAloneSeconds: round3(secondsOf(row.verify)),
    candidateSeconds: round3(secondsOf(row.candidate)),
    candidateCpuSeconds: round3(cpuOf(row.candidate)),
    candidateOfDepth1: round3(secondsOf(row.candidate) / candidate1),
    candidateOfFullSameContent: round3(secondsOf(row.candidate) / candidateFull),
    candidateOverOurs: round3(secondsOf(row.candidate) / secondsOf(row.ours)),
    oldSeconds: row.old.length ? round3(secondsOf(row.old)) : null,
    oldCpuSeconds: row.old.length ? round3(cpuOf(row.old)) : null,
  }));
  console.table(table);
  console.log(JSON.stringify({ sizeBytes, dataBytes: layout.dataBytes, runs: args.runs, pageCache: args.warm ? 'warm' : 'dropped before each restore', loadAverage, machine: facts, table }, null, 2));
} finally {
  await rm(work, { recursive: true, force: true });
}
