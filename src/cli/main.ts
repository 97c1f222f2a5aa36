/** CLI entry (bin/sendense-nutanix). A command is added with one import and one register call. */
import { createProgram, runProgram } from './program.ts';
import { registerBackupCommand } from './backup.ts';
import { registerPointsCommand, registerRestoreCommand, registerVerifyCommand } from './points.ts';
import { registerVmsCommand } from './vms.ts';
import { registerOperatorCommand } from './operator.ts';
import { registerMoverCommand } from './mover.ts';

const program = createProgram();
registerVmsCommand(program);
registerBackupCommand(program);
registerPointsCommand(program);
registerRestoreCommand(program);
registerVerifyCommand(program);
registerOperatorCommand(program);
registerMoverCommand(program);

process.exitCode = await runProgram(program, process.argv);
