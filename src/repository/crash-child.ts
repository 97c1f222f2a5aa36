/**
 * Test support, run as a separate process: stages a restore point up to just before commit, records Nutanix
 * resources in its journal, prints `ready <point-id>` and waits to be killed. Arguments: repo, cluster, vm.
 */
import { z } from 'zod';
import { beginPoint } from './staging.ts';
import { MiB, qemuIo } from './test-repo.ts';

const [repo, clusterUuid, vmUuid] = z.tuple([z.string().min(1), z.string().min(1), z.string().min(1)]).parse(process.argv.slice(2));
const vm = { repo, clusterUuid, vmUuid };
const staged = await beginPoint(vm, { parentPointId: null, recoveryPointRequestId: 'request-1' });
await staged.addResource({ kind: 'recovery-point', id: 'rp-1', detail: { generation: 'v4' } });
await staged.addResource({ kind: 'volume-group', id: 'vg-1' });
const image = await staged.createDiskImage(0, 16 * MiB, { overlay: false });
await qemuIo(image, 'qcow2', [{ offset: 0, length: MiB, pattern: 0x5a }]);
await staged.writeDisk({
  index: 0,
  uuid: 'disk-0-uuid',
  logicalSizeBytes: 16 * MiB,
  stats: { logicalBytes: 16 * MiB, changedBytes: MiB, transferredBytes: MiB, zeroBytes: 0, durationMs: 1, throughputBytesPerSec: MiB },
  checksums: [],
  zeroRanges: [],
});
process.stdout.write(`ready ${staged.pointId}\n`);
setInterval(() => undefined, 60_000);
