/** `sendense-nutanix backup`: one backup of one VM into a repository, with a progress bar per disk on a terminal. */
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import { type Command, Option } from 'commander';
import { z } from 'zod';
import { BackupMode, backupVm, type BackupResult, type DiskProgressEvent } from '../engine/backup.ts';
import { ConsistencyMode } from '../engine/consistency.ts';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { formatBytes, parseSize } from '../lib/size.ts';
import { StorageTier } from '../mover/tiers.ts';
import { createPrismClient } from '../prism/client.ts';
import { addConnectionOptions, connectionFromFlags } from './connection.ts';
import { addOutputOption, outputFormatSchema, printJson, printTable } from './output.ts';
import { commandContext } from './program.ts';

const flagsSchema = z.object({
  vm: z.string().min(1),
  repo: z.string().min(1),
  mode: z.enum(Object.values(BackupMode)),
  consistency: z.enum(Object.values(ConsistencyMode)),
  initiatorName: z.string().min(1),
  parallelDisks: z.string(),
  tier: z.enum(Object.values(StorageTier)),
  requestSize: z.string().optional(),
  inFlight: z.string().optional(),
  output: outputFormatSchema,
});

function positiveInt(text: string, flag: string, max: number): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new AppError(ErrorCode.InvalidInput, `${flag}: "${text}" is not a whole number from 1 to ${max}`, { hint: `pass ${flag} 1..${max}` });
  }
  return value;
}

/** The `-o json` summary of a committed point. */
export function backupSummary(result: BackupResult) {
  const { manifest, dir } = result.point;
  const sum = (pick: (s: (typeof manifest.disks)[number]['stats']) => number) => manifest.disks.reduce((total, d) => total + pick(d.stats), 0);
  return {
    pointId: manifest.pointId,
    parentPointId: manifest.parentPointId,
    dir,
    type: manifest.type,
    typeReason: manifest.typeReason,
    vm: { uuid: manifest.vm.uuid, name: manifest.vm.name, cluster: manifest.vm.cluster },
    consistency: manifest.consistency,
    recoveryPoint: { id: manifest.recoveryPoint.id, generation: manifest.recoveryPoint.generation },
    deletedBaseRecoveryPoints: result.deletedBaseRecoveryPoints,
    disks: manifest.disks.map((d) => ({ index: d.index, uuid: d.uuid, image: d.image, backingFile: d.backingFile, ...d.stats })),
    totals: {
      logicalBytes: sum((s) => s.logicalBytes),
      changedBytes: sum((s) => s.changedBytes),
      transferredBytes: sum((s) => s.transferredBytes),
      zeroBytes: sum((s) => s.zeroBytes),
    },
    startedAt: manifest.createdAt,
    completedAt: manifest.completedAt,
    /** Where the time went: VM lookup, recovery point, per-disk plan / export / copy / teardown, commit, base delete. */
    timings: result.timings,
  };
}

/** One bar per disk: bytes of the plan done, throughput of transferred bytes, ETA. */
function progressBars(): { onProgress: (event: DiskProgressEvent) => void; stop: () => void } {
  const bars = new MultiBar(
    {
      format: ' disk {disk} {bar} {percentage}% | {done} / {planned} | {rate}/s | ETA {eta_formatted}',
      hideCursor: true,
      clearOnComplete: false,
      stream: process.stderr,
    },
    Presets.shades_classic,
  );
  const byDisk = new Map<number, { bar: SingleBar; started: number }>();
  return {
    onProgress: (event) => {
      let entry = byDisk.get(event.diskIndex);
      if (!entry) {
        entry = { bar: bars.create(1, 0, { disk: event.diskIndex, done: '0 B', planned: '?', rate: '0 B' }), started: performance.now() };
        byDisk.set(event.diskIndex, entry);
      }
      const seconds = (performance.now() - entry.started) / 1000;
      entry.bar.setTotal(Math.max(1, event.totalBytes));
      entry.bar.update(event.doneBytes, {
        done: formatBytes(event.doneBytes),
        planned: formatBytes(event.totalBytes),
        rate: formatBytes(seconds > 0 ? Math.round(event.transferredBytes / seconds) : 0),
      });
    },
    stop: () => bars.stop(),
  };
}

export function registerBackupCommand(program: Command): void {
  const command = program
    .command('backup')
    .description('back up one VM: recovery point, changed regions, QCOW2 restore point')
    .requiredOption('--vm <name|uuid>', 'the VM to back up')
    .requiredOption('--repo <dir>', 'repository directory')
    .addOption(new Option('--mode <mode>', 'full, incremental, or auto (incremental when a base exists)').choices(Object.values(BackupMode)).default('auto'))
    .addOption(
      new Option('--consistency <mode>', 'application (fail if NGT cannot quiesce), crash, or auto (application when possible)')
        .choices(Object.values(ConsistencyMode))
        .default('auto'),
    )
    .option('--initiator-name <iqn>', 'iSCSI initiator name of this host', `iqn.2026-11.io.sendense:${hostname()}`)
    .option('--parallel-disks <n>', 'disks copied at once', '2')
    .addOption(new Option('--tier <tier>', 'storage tier tuning (request size, requests in flight)').choices(Object.values(StorageTier)).default('ssd'))
    .option('--request-size <size>', 'override the tier: bytes per NBD read, e.g. 2MiB')
    .option('--in-flight <n>', 'override the tier: NBD reads in flight per disk');
  addConnectionOptions(command);
  addOutputOption(command);
  command.action(async (rawFlags: unknown) => {
    const flags = flagsSchema.parse(rawFlags);
    const connection = await connectionFromFlags(rawFlags);
    const { log, signal } = commandContext();
    const tuning = {
      ...(flags.requestSize ? { requestSize: parseSize(flags.requestSize, '--request-size') } : {}),
      ...(flags.inFlight ? { inFlight: positiveInt(flags.inFlight, '--in-flight', 64) } : {}),
    };
    const bars = flags.output === 'table' && process.stderr.isTTY ? progressBars() : undefined;
    const client = createPrismClient(connection, { logger: log });
    let result: BackupResult;
    try {
      result = await backupVm(client, {
        repo: resolve(flags.repo),
        vm: flags.vm,
        mode: flags.mode,
        consistency: flags.consistency,
        initiatorName: flags.initiatorName,
        parallelDisks: positiveInt(flags.parallelDisks, '--parallel-disks', 16),
        tier: flags.tier,
        tuning,
        signal,
        logger: log,
        ...(bars ? { onProgress: bars.onProgress } : {}),
      });
    } finally {
      bars?.stop();
      await client.close();
    }
    const summary = backupSummary(result);
    if (flags.output === 'json') {
      printJson(summary);
      return;
    }
    process.stdout.write(
      `${summary.type} restore point ${summary.pointId} of ${summary.vm.name} (${summary.consistency.obtained}${summary.consistency.reason ? `: ${summary.consistency.reason}` : ''})\n` +
        `  ${summary.typeReason}\n`,
    );
    printTable(
      ['disk', 'logical', 'changed', 'transferred', 'zero', 'seconds', 'throughput'],
      summary.disks.map((d) => [
        String(d.index),
        formatBytes(d.logicalBytes),
        formatBytes(d.changedBytes),
        formatBytes(d.transferredBytes),
        formatBytes(d.zeroBytes),
        (d.durationMs / 1000).toFixed(2),
        `${formatBytes(Math.round(d.throughputBytesPerSec))}/s`,
      ]),
    );
  });
}
