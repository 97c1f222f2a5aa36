/** `points`, `restore` and `verify`: reading a repository; no Prism connection needed. */
import { resolve } from 'node:path';
import { type Command, Option } from 'commander';
import { z } from 'zod';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { formatBytes } from '../lib/size.ts';
import { listPoints, restoreDisk, summarizePoints, verifyRepository } from '../repository/index.ts';
import { addOutputOption, outputFormatSchema, printJson, printTable } from './output.ts';
import { commandContext } from './program.ts';

export function registerPointsCommand(program: Command): void {
  const command = program
    .command('points')
    .description('list restore points, newest last')
    .requiredOption('--repo <dir>', 'repository directory')
    .option('--vm <name|uuid>', 'only this VM');
  addOutputOption(command);
  command.action(async (rawFlags: unknown) => {
    const flags = z.object({ repo: z.string(), vm: z.string().optional(), output: outputFormatSchema }).parse(rawFlags);
    const rows = summarizePoints(await listPoints(resolve(flags.repo), flags.vm));
    if (flags.output === 'json') {
      printJson(rows);
      return;
    }
    printTable(
      ['vm', 'point', 'type', 'depth', 'consistency', 'disks', 'logical', 'transferred', 'completed'],
      rows.map((r) => [
        r.vmName,
        r.pointId,
        r.type,
        String(r.chainDepth),
        r.consistency === 'APPLICATION_CONSISTENT' ? 'application' : 'crash',
        String(r.disks),
        formatBytes(r.logicalBytes),
        formatBytes(r.transferredBytes),
        r.completedAt,
      ]),
    );
  });
}

export function registerRestoreCommand(program: Command): void {
  const command = program
    .command('restore')
    .description('write a flat image of one disk at one restore point')
    .requiredOption('--repo <dir>', 'repository directory')
    .requiredOption('--vm <name|uuid>', 'the VM')
    .option('--point <id|latest>', 'restore point', 'latest')
    .requiredOption('--disk <index>', 'disk index (as `points` / the manifest show)')
    .requiredOption('--out <file>', 'output file (written aside and renamed when complete)')
    .addOption(new Option('--format <format>', 'output format').choices(['raw', 'qcow2']).default('raw'))
    .option('--verify-checksums', 're-read and check every checksum of the chain first');
  addOutputOption(command);
  command.action(async (rawFlags: unknown) => {
      const flags = z
        .object({
          repo: z.string(),
          vm: z.string(),
          point: z.string(),
          disk: z.string(),
          out: z.string(),
          format: z.enum(['raw', 'qcow2']),
          verifyChecksums: z.boolean().optional(),
          output: outputFormatSchema,
        })
        .parse(rawFlags);
      const diskIndex = Number(flags.disk);
      if (!Number.isInteger(diskIndex) || diskIndex < 0) {
        throw new AppError(ErrorCode.InvalidInput, `--disk: "${flags.disk}" is not a disk index`, { hint: 'pass 0, 1, …' });
      }
      const { signal } = commandContext();
      const result = await restoreDisk({
        repo: resolve(flags.repo),
        vm: flags.vm,
        point: flags.point,
        diskIndex,
        out: resolve(flags.out),
        format: flags.format,
        verifyChecksums: flags.verifyChecksums ?? false,
        signal,
      });
      const summary = {
        vm: result.point.manifest.vm.name,
        pointId: result.point.pointId,
        diskIndex: result.diskIndex,
        out: result.out,
        format: result.format,
        sizeBytes: result.sizeBytes,
        chainVerified: result.verification.ok,
      };
      if (flags.output === 'json') printJson(summary);
      else process.stdout.write(`restored disk ${summary.diskIndex} of ${summary.vm} at ${summary.pointId} (${formatBytes(summary.sizeBytes)}, ${summary.format}) to ${summary.out}\n`);
    });
}

export function registerVerifyCommand(program: Command): void {
  const command = program
    .command('verify')
    .description('check every image, chain link and checksum of a repository (or of one VM / point)')
    .requiredOption('--repo <dir>', 'repository directory')
    .option('--vm <name|uuid>', 'only this VM')
    .option('--point <id|latest>', 'only this point and its ancestors (needs --vm)')
    .option('--no-checksums', 'skip re-reading data (metadata and chain checks only)');
  addOutputOption(command);
  command.action(async (rawFlags: unknown) => {
    const flags = z
      .object({ repo: z.string(), vm: z.string().optional(), point: z.string().optional(), checksums: z.boolean(), output: outputFormatSchema })
      .parse(rawFlags);
    if (flags.point && !flags.vm) throw new AppError(ErrorCode.InvalidInput, '--point needs --vm', { hint: 'pass --vm NAME|UUID too' });
    const { signal } = commandContext();
    const report = await verifyRepository(resolve(flags.repo), {
      ...(flags.vm ? { vm: flags.vm } : {}),
      ...(flags.point ? { point: flags.point } : {}),
      checksums: flags.checksums,
      signal,
    });
    if (flags.output === 'json') printJson(report);
    else {
      for (const issue of report.issues) process.stdout.write(`${issue.message}\n`);
      process.stdout.write(
        `${report.ok ? 'OK' : 'FAILED'}: ${report.points} points, ${report.images} images, ${report.blocksChecked} blocks (${formatBytes(report.bytesChecked)}) checked, ${report.issues.length} issues\n`,
      );
    }
    if (!report.ok) process.exitCode = 6;
  });
}
