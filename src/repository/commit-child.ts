/**
 * Test support, run as a separate process (under strace by commit-durability.test.ts): commits a full and an
 * incremental of two 16 MiB disks. Arguments: repo, scratch folder for the reference disks.
 */
import { z } from 'zod';
import { MiB, ReferenceDisks, commitTestPoint } from './test-repo.ts';

const [repo, scratch] = z.tuple([z.string().min(1), z.string().min(1)]).parse(process.argv.slice(2));
const vm = { repo, clusterUuid: 'cluster-1', vmUuid: 'vm-1' };
const reference = new ReferenceDisks(scratch, [16 * MiB, 16 * MiB]);
await reference.create();
const full = await commitTestPoint(vm, null, [[{ offset: 0, length: MiB, pattern: 1 }], [{ offset: 4 * MiB, length: MiB, pattern: 2 }]], reference);
const incremental = await commitTestPoint(vm, full.pointId, [[{ offset: MiB, length: MiB, pattern: 3 }], [{ offset: 0, length: MiB }]], reference);
process.stdout.write(`${full.pointId} ${incremental.pointId}\n`);
