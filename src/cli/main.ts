/** CLI entry (bin/sendense-nutanix). A command is added with one import and one register call. */
import { createProgram, runProgram } from './program.ts';
import { registerVmsCommand } from './vms.ts';

const program = createProgram();
registerVmsCommand(program);

process.exitCode = await runProgram(program, process.argv);
