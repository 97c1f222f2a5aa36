/** The simulator's own admin API under /_sim/ (bearer adminToken): faults, counters, NGT, guest writes, inventory of leftovers. */
import { z } from 'zod';
import { faultRulesSchema } from './faults.ts';
import type { Reply, Route, Sim } from './server.ts';
import { liveDiskPath, ngtSchema } from './state.ts';
import { WorldError } from './world.ts';
import { iqnOf } from './v4.ts';

const writeSchema = z.object({ changedPercent: z.number().min(0).max(100), seed: z.number().int().optional() });
const resizeSchema = z.object({ sizeBytes: z.number().int().positive() });

function bad(message: string, status = 400): Reply {
  return { status, body: { error: message } };
}

function parsed<T extends z.ZodType>(schema: T, body: unknown): { ok: true; value: z.infer<T> } | { ok: false; reply: Reply } {
  const result = schema.safeParse(body ?? {});
  if (result.success) return { ok: true, value: result.data };
  return { ok: false, reply: bad(result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')) };
}

async function guarded(fn: () => Promise<Reply>): Promise<Reply> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof WorldError) return bad(err.message, err.status);
    throw err;
  }
}

export function adminRoutes(sim: Sim): Route[] {
  const world = sim.world;
  const vmOr404 = (name: string | undefined): ReturnType<typeof world.vmByName> => world.vmByName(name ?? '');
  return [
    {
      method: 'GET',
      template: '/_sim/state',
      access: 'admin',
      handler: () => ({
        status: 200,
        body: {
          vms: world.state.vms.length,
          recoveryPoints: world.state.snapshots
            .filter((s) => s.api === 'v4')
            .map((s) => ({ extId: s.uuid, name: s.name, state: s.state, vmExtIds: s.requestedVmUuids, types: s.vms.map((v) => v.type) })),
          vmSnapshots: world.state.snapshots
            .filter((s) => s.api === 'v3')
            .map((s) => ({ uuid: s.uuid, name: s.name, state: s.state, vmUuid: s.requestedVmUuids[0], types: s.vms.map((v) => v.type) })),
          volumeGroups: world.state.volumeGroups.map((vg) => ({ extId: vg.uuid, name: vg.name, iqn: iqnOf(vg), attachedInitiators: vg.initiators, disks: vg.disks.length })),
          iscsiTargets: (sim.tgtd?.list() ?? []).map((t) => ({ tid: t.tid, iqn: t.iqn, luns: t.luns, initiators: t.initiators })),
          tasks: { total: world.state.tasks.length, unfinished: sim.tasks.unfinished() },
          sessions: sim.sessionCount(),
          dataServicesIp: sim.tgtd?.ip,
        },
      }),
    },
    {
      method: 'GET',
      template: '/_sim/counters',
      access: 'admin',
      handler: () => {
        const byRoute = Object.fromEntries([...sim.counters.entries()].sort());
        return { status: 200, body: { total: [...sim.counters.values()].reduce((a, b) => a + b, 0), byRoute } };
      },
    },
    {
      method: 'DELETE',
      template: '/_sim/counters',
      access: 'admin',
      handler: () => {
        sim.counters.clear();
        return { status: 204 };
      },
    },
    {
      // Waits until the simulated storage is idle (deleted snapshots' files freed, state saved): a benchmark settles
      // before it times the next backup, whose disk the simulator shares only because it runs on the same host.
      method: 'POST',
      template: '/_sim/settle',
      access: 'admin',
      handler: async () => {
        await world.flush();
        return { status: 204 };
      },
    },
    { method: 'GET', template: '/_sim/faults', access: 'admin', handler: () => ({ status: 200, body: { rules: sim.faults.list() } }) },
    {
      method: 'POST',
      template: '/_sim/faults',
      access: 'admin',
      handler: (ctx) => {
        const body = parsed(z.object({ rules: faultRulesSchema }), ctx.body);
        if (!body.ok) return body.reply;
        return { status: 200, body: { ids: sim.faults.add(body.value.rules) } };
      },
    },
    {
      method: 'DELETE',
      template: '/_sim/faults',
      access: 'admin',
      handler: () => {
        sim.faults.clear();
        return { status: 204 };
      },
    },
    {
      method: 'POST',
      template: '/_sim/sessions/expire',
      access: 'admin',
      handler: () => {
        sim.expireSessions();
        return { status: 204 };
      },
    },
    {
      method: 'PUT',
      template: '/_sim/vms/{name}/ngt',
      access: 'admin',
      handler: (ctx) => {
        const vm = vmOr404(ctx.params.name);
        if (!vm) return bad(`no VM named ${ctx.params.name}`, 404);
        const body = parsed(ngtSchema.partial(), ctx.body);
        if (!body.ok) return body.reply;
        Object.assign(vm.ngt, body.value);
        vm.specVersion += 1;
        world.changed();
        return { status: 200, body: vm.ngt };
      },
    },
    {
      method: 'GET',
      template: '/_sim/vms/{name}/disks/{index}',
      access: 'admin',
      handler: (ctx) =>
        guarded(async () => {
          const vm = vmOr404(ctx.params.name);
          if (!vm) return bad(`no VM named ${ctx.params.name}`, 404);
          const disk = world.diskByIndex(vm, Number(ctx.params.index));
          await world.ensureDisk(vm, disk);
          return { status: 200, body: { uuid: disk.uuid, path: liveDiskPath(world.dataDir, vm.uuid, disk.uuid), sizeBytes: disk.sizeBytes, generation: disk.generation } };
        }),
    },
    {
      method: 'POST',
      template: '/_sim/vms/{name}/disks/{index}/write',
      access: 'admin',
      handler: (ctx) =>
        guarded(async () => {
          const vm = vmOr404(ctx.params.name);
          if (!vm) return bad(`no VM named ${ctx.params.name}`, 404);
          const body = parsed(writeSchema, ctx.body);
          if (!body.ok) return body.reply;
          const result = await world.writeDisk(vm, Number(ctx.params.index), body.value.changedPercent, body.value.seed);
          return { status: 200, body: result };
        }),
    },
    {
      method: 'POST',
      template: '/_sim/vms/{name}/disks/{index}/resize',
      access: 'admin',
      handler: (ctx) =>
        guarded(async () => {
          const vm = vmOr404(ctx.params.name);
          if (!vm) return bad(`no VM named ${ctx.params.name}`, 404);
          const body = parsed(resizeSchema, ctx.body);
          if (!body.ok) return body.reply;
          await world.resizeDisk(vm, Number(ctx.params.index), body.value.sizeBytes);
          return { status: 200, body: { sizeBytes: body.value.sizeBytes } };
        }),
    },
  ];
}
