/**
 * Where the time of one backup goes (issue 5: the fixed control-plane cost of every backup). Starts the Prism
 * simulator with a small disk per generation (one VM each), then per round: a full through v4 and through v3, a
 * guest write of --change-percent, an incremental through each. Prints the median of every phase the engine reports
 * (BackupResult.timings) and the incremental / full time ratio.
 *
 *   node_modules/.bin/node bench/control-plane.ts [--size 256MiB] [--runs 3] [--change-percent 5]
 *       [--task-duration 0ms] [--poll-ms N] [--json FILE]
 *
 * --task-duration is passed to the simulator (how long each Prism task stays RUNNING, per operation if wanted);
 * --poll-ms overrides the client's first task-poll delay of the v4 GET polling (250 was the former default).
 */
import { writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { backupVm, type BackupTimings } from '../src/engine/backup.ts';
import { createLogger } from '../src/lib/log.ts';
import { createPrismClient } from '../src/prism/client.ts';
import type { PrismClient } from '../src/prism/types.ts';
import { startSim } from '../test/support/sim.ts';

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '256MiB' },
    runs: { type: 'string', default: '3' },
    'change-percent': { type: 'string', default: '5' },
    'task-duration': { type: 'string' },
    'poll-ms': { type: 'string' },
    json: { type: 'string' },
  },
});
const args = z
  .object({
    size: z.string().regex(/^\d+(MiB|GiB)$/, '--size: e.g. 256MiB or 1GiB'),
    runs: z.coerce.number().int().min(1).max(20),
    'change-percent': z.coerce.number().positive().max(100),
    'task-duration': z.string().optional(),
    'poll-ms': z.coerce.number().int().min(1).max(10_000).optional(),
    json: z.string().optional(),
  })
  .parse(values);

// One VM per generation, so neither deletes the other's recovery points' shared files (the simulator's snapshots
// are hard links; the last link's delete pays for freeing the data). Odd indexes: disks of exactly --size.
const vms = { v4: 'vm-0001', v3: 'vm-0003' } as const;
const initiatorName = `iqn.2026-11.io.sendense:control-plane-${hostname()}`;
const logger = createLogger({ level: 'warn', name: 'control-plane' });
const generations = ['v4', 'v3'] as const;
const kinds = ['full', 'incremental'] as const;
type Series = `${(typeof generations)[number]} ${(typeof kinds)[number]}`;

/** Flat phase name → ms, for one backup of a one-disk VM. */
function phasesOf(timings: BackupTimings): Record<string, number> {
  const disk = timings.disks[0];
  const phases = {
    prepare: timings.prepareMs,
    'recovery point': timings.recoveryPointMs,
    'plan (changed regions)': disk?.planMs ?? 0,
    'export setup': disk?.exportSetupMs ?? 0,
    'target image': disk?.targetMs ?? 0,
    copy: disk?.copyMs ?? 0,
    'export teardown': disk?.exportTeardownMs ?? 0,
    'disk record': disk?.recordMs ?? 0,
    commit: timings.commitMs,
    'base delete': timings.baseDeleteMs,
  };
  const sum = Object.values(phases).reduce((a, b) => a + b, 0);
  // Phases may overlap (then the sum exceeds the total); a positive rest is time no phase accounts for.
  return { ...phases, 'sum of phases': sum, total: timings.totalMs, 'total - copy': timings.totalMs - phases.copy };
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

const sim = await startSim({ vms: 3, disksPerVm: 1, diskSize: args.size, ...(args['task-duration'] ? { taskDuration: args['task-duration'] } : {}) });
const work = await mkdtemp(path.join(tmpdir(), 'control-plane-'));
const connection = { endpoint: sim.endpoint, username: sim.username, password: sim.password, caPem: sim.caPem };
const taskWait = args['poll-ms'] === undefined ? {} : { taskWait: { pollMs: args['poll-ms'] } };
const clients: Record<(typeof generations)[number], PrismClient> = {
  v4: createPrismClient(connection, { logger, generation: 'v4', ...taskWait }),
  v3: createPrismClient(connection, { logger, generation: 'v3', ...taskWait }),
};
const samples = new Map<Series, Record<string, number>[]>();
try {
  for (const vm of Object.values(vms)) await sim.diskPath(vm, 0); // generate the disks outside the measurement
  for (let round = 1; round <= args.runs; round++) {
    for (const kind of kinds) {
      if (kind === 'incremental') for (const vm of Object.values(vms)) await sim.admin.write(vm, 0, args['change-percent'], 1000 + round);
      // Alternate which generation goes first, so neither always finds a warm page cache.
      const order = round % 2 ? generations : [...generations].reverse();
      for (const generation of order) {
        // The simulator's storage shares this disk only because it runs here: idle before each backup.
        await sim.admin.settle();
        const result = await backupVm(clients[generation], {
          repo: path.join(work, generation),
          vm: vms[generation],
          mode: kind,
          consistency: 'crash',
          initiatorName,
          logger,
        });
        const series: Series = `${generation} ${kind}`;
        samples.set(series, [...(samples.get(series) ?? []), phasesOf(result.timings)]);
        console.error(`round ${round} ${series}: ${result.timings.totalMs.toFixed(0)} ms`);
      }
    }
  }
} finally {
  await Promise.all(Object.values(clients).map((c) => c.close()));
  await sim.stop();
  await rm(work, { recursive: true, force: true });
}

const series = [...samples.keys()];
const medians = Object.fromEntries(series.map((s) => {
  const runs = samples.get(s) ?? [];
  const phases = Object.keys(runs[0] ?? {});
  return [s, Object.fromEntries(phases.map((p) => [p, Number(median(runs.map((r) => r[p] ?? 0)).toFixed(1))]))];
})) as Partial<Record<Series, Record<string, number>>>;

const phaseNames = Object.keys(Object.values(medians)[0] ?? {});
const width = Math.max(...phaseNames.map((p) => p.length));
console.log(`median ms over ${args.runs} run(s); ${args.size} disk, ${args['change-percent']} % change, task duration ${args['task-duration'] ?? '0ms'}${args['poll-ms'] ? `, first poll ${args['poll-ms']} ms` : ''}`);
console.log(['phase'.padEnd(width), ...series.map((s) => s.padStart(16))].join(' | '));
for (const phase of phaseNames) console.log([phase.padEnd(width), ...series.map((s) => String(medians[s]?.[phase] ?? '-').padStart(16))].join(' | '));
const ratios = Object.fromEntries(generations.map((g) => [g, Number(((medians[`${g} incremental`]?.total ?? NaN) / (medians[`${g} full`]?.total ?? NaN)).toFixed(3))]));
for (const g of generations) console.log(`${g}: incremental / full = ${ratios[g]}`);
if (args.json) writeFileSync(args.json, `${JSON.stringify({ args, medians, ratios, samples: Object.fromEntries(samples) }, null, 2)}\n`);
