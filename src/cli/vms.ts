/** `sendense-nutanix vms`: lists the VMs Prism shows this user, with their real disks. */
import type { Command } from 'commander';
import { z } from 'zod';
import { formatBytes } from '../lib/size.ts';
import { createPrismClient } from '../prism/client.ts';
import type { Vm } from '../prism/types.ts';
import { addConnectionOptions, connectionFromFlags } from './connection.ts';
import { addOutputOption, outputFormatSchema, printJson, printTable } from './output.ts';
import { commandContext } from './program.ts';

/** The `-o json` record of one VM. */
export function vmRecord(vm: Vm) {
  return {
    uuid: vm.uuid,
    name: vm.name,
    cluster: vm.cluster,
    powerState: vm.powerState,
    ngt: vm.ngt,
    categories: vm.categories,
    disks: vm.disks.map((d) => ({ uuid: d.uuid, index: d.index, busType: d.busType, sizeBytes: d.sizeBytes, container: d.container ?? null })),
  };
}

function ngtSummary(vm: Vm): string {
  if (!vm.ngt.installed) return 'none';
  if (!vm.ngt.enabled) return 'disabled';
  if (!vm.ngt.reachable) return 'unreachable';
  return vm.ngt.vssSnapshotCapable ? 'vss' : 'ok';
}

export function registerVmsCommand(program: Command): void {
  const command = program.command('vms').description('list the VMs Prism shows this user, with their disks');
  addConnectionOptions(command);
  addOutputOption(command);
  command.action(async (flags: unknown) => {
    const { output } = z.object({ output: outputFormatSchema }).parse(flags);
    const connection = await connectionFromFlags(flags);
    const { log, signal } = commandContext();
    const client = createPrismClient(connection, { logger: log });
    try {
      const vms = (await client.listVms({ signal })).sort((a, b) => a.name.localeCompare(b.name) || a.uuid.localeCompare(b.uuid));
      if (vms.length === 0) {
        // ENG-453487: v3 answers 200 with nothing, not 403, when the user lacks permission.
        process.stderr.write('no VMs visible to this user (if there should be some, the user may lack the permission to view VMs)\n');
      }
      if (output === 'json') {
        printJson(vms.map(vmRecord));
        return;
      }
      printTable(
        ['name', 'uuid', 'cluster', 'power', 'ngt', 'disks', 'size'],
        vms.map((vm) => [
          vm.name,
          vm.uuid,
          vm.cluster.name ?? vm.cluster.uuid,
          vm.powerState,
          ngtSummary(vm),
          String(vm.disks.length),
          formatBytes(vm.disks.reduce((sum, d) => sum + d.sizeBytes, 0)),
        ]),
      );
    } finally {
      await client.close();
    }
  });
}
