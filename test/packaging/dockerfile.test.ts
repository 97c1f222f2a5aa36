/**
 * The Dockerfile, checked statically: no container engine runs here, so the image is never built by these tests
 * (see docs/operations.md). What can be checked without building it: the stages and their base image, the final
 * user, what is copied (never the simulator), the packages installed, and that every module the image's code loads
 * at run time is inside the copied tree or a production dependency.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { isBuiltin } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { repoRoot } from './manifests.ts';

interface Instruction {
  keyword: string;
  args: string;
}
interface Stage {
  base: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** Dockerfile instructions, line continuations joined, comments dropped, ${ARG} defaults substituted in FROM. */
function parseDockerfile(text: string): Stage[] {
  const logicalLines = text
    .split('\n')
    .filter((line) => !/^\s*#/.test(line))
    .join('\n')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.length > 0);
  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of logicalLines) {
    const match = /^(\S+)\s+(.*)$/.exec(line);
    if (!match) throw new Error(`unparsable Dockerfile line: ${line}`);
    const keyword = match[1]!.toUpperCase();
    const args = match[2]!;
    const current = stages.at(-1);
    if (keyword === 'ARG' && !current) {
      const [name, value = ''] = args.split('=', 2);
      globalArgs.set(name!, value);
    } else if (keyword === 'FROM') {
      const from = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      if (!from) throw new Error(`unparsable FROM: ${args}`);
      const base = from[1]!.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, braced: string | undefined, bare: string | undefined) => globalArgs.get(braced ?? bare ?? '') ?? '');
      stages.push({ base, name: from[2], instructions: [] });
    } else if (current) {
      current.instructions.push({ keyword, args });
    } else {
      throw new Error(`${keyword} before the first FROM`);
    }
  }
  return stages;
}

/** Sources of a COPY/ADD instruction (all but the destination; flags dropped). */
function copySources(args: string): { from: string | undefined; sources: string[] } {
  const words = args.split(/\s+/);
  const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
  const paths = words.filter((w) => !w.startsWith('--'));
  return { from, sources: paths.slice(0, -1) };
}

/** Module specifiers a TypeScript file loads at run time (type-only imports and exports are erased). */
function runtimeImports(fileName: string, text: string): string[] {
  const source = ts.createSourceFile(fileName, text, ts.ScriptTarget.ES2024, true, ts.ScriptKind.TS);
  const found: string[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && !node.importClause?.isTypeOnly && ts.isStringLiteral(node.moduleSpecifier)) {
      const named = node.importClause?.namedBindings;
      const allTypeOnly =
        !node.importClause?.name && named !== undefined && ts.isNamedImports(named) && named.elements.length > 0 && named.elements.every((e) => e.isTypeOnly);
      if (!allTypeOnly) found.push(node.moduleSpecifier.text);
    } else if (ts.isExportDeclaration(node) && !node.isTypeOnly && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      found.push(node.moduleSpecifier.text);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const [argument] = node.arguments;
      if (argument && ts.isStringLiteral(argument)) found.push(argument.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

const packageJson = z.object({ dependencies: z.record(z.string(), z.string()), devDependencies: z.record(z.string(), z.string()) });

describe('Dockerfile (static checks; the image build is not exercised here)', () => {
  let stages: Stage[];
  let finalStage: Stage;
  let dockerignore: string[];

  beforeAll(async () => {
    stages = parseDockerfile(await readFile(join(repoRoot, 'Dockerfile'), 'utf8'));
    finalStage = stages.at(-1)!;
    dockerignore = (await readFile(join(repoRoot, '.dockerignore'), 'utf8'))
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line && !line.startsWith('#'));
  });

  it('is multi-stage and every stage is Node 24 on Debian bookworm', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const stage of stages) expect(stage.base).toMatch(/^node:24[.\d]*-bookworm-slim(@sha256:[0-9a-f]{64})?$/);
  });

  it('installs only production dependencies with npm ci, from the lock file', () => {
    const dependencies = stages.find((s) => s.instructions.some((i) => i.keyword === 'RUN' && /\bnpm ci\b/.test(i.args)));
    expect(dependencies, 'a stage runs npm ci').toBeDefined();
    const install = dependencies!.instructions.find((i) => i.keyword === 'RUN' && /\bnpm ci\b/.test(i.args))!;
    expect(install.args).toMatch(/npm ci --omit=dev/);
    const copied = dependencies!.instructions.filter((i) => i.keyword === 'COPY').flatMap((i) => copySources(i.args).sources);
    expect(copied).toEqual(expect.arrayContaining(['package.json', 'package-lock.json']));
  });

  it('installs qemu-utils and qemu-block-extra without recommends in the final stage', () => {
    const apt = finalStage.instructions.find((i) => i.keyword === 'RUN' && /apt-get install/.test(i.args));
    expect(apt?.args).toMatch(/apt-get install -y --no-install-recommends [^&]*\bqemu-utils\b/);
    expect(apt?.args).toMatch(/apt-get install [^&]*\bqemu-block-extra\b/);
    expect(apt?.args).toMatch(/rm -rf \/var\/lib\/apt\/lists/);
  });

  it('runs as the non-root uid 65532 and starts bin/sendense-nutanix', () => {
    const users = finalStage.instructions.filter((i) => i.keyword === 'USER');
    expect(users.at(-1)?.args).toBe('65532:65532');
    const lastUserIndex = finalStage.instructions.lastIndexOf(users.at(-1)!);
    // Nothing after USER may need root.
    expect(finalStage.instructions.slice(lastUserIndex + 1).filter((i) => i.keyword === 'RUN')).toEqual([]);
    const entrypoint = finalStage.instructions.filter((i) => i.keyword === 'ENTRYPOINT').at(-1);
    expect(z.array(z.string()).parse(JSON.parse(entrypoint?.args ?? 'null'))).toEqual(['/app/bin/sendense-nutanix']);
    // The chart's Deployment calls `sendense-nutanix operator`: the command must be on PATH.
    expect(finalStage.instructions.some((i) => i.keyword === 'RUN' && i.args.includes('/usr/local/bin/sendense-nutanix'))).toBe(true);
  });

  it('copies only package*.json, bin/ and src/ from the context (never sim/), and they exist', async () => {
    const fromContext = stages.flatMap((s) => s.instructions.filter((i) => i.keyword === 'COPY' || i.keyword === 'ADD'));
    expect(fromContext.filter((i) => i.keyword === 'ADD')).toEqual([]);
    const sources = fromContext.map((i) => copySources(i.args)).filter((c) => c.from === undefined).flatMap((c) => c.sources);
    expect(new Set(sources)).toEqual(new Set(['package.json', 'package-lock.json', 'bin/', 'src/']));
    for (const source of sources) await expect(stat(join(repoRoot, source)), source).resolves.toBeDefined();
    expect(sources.some((s) => /(^|\/)sim(\/|$)/.test(s))).toBe(false);
  });

  it('.dockerignore excludes everything but the copied files (the simulator and tests stay out of the context)', () => {
    expect(dockerignore[0]).toBe('*');
    expect(dockerignore.filter((p) => p.startsWith('!')).sort()).toEqual(['!bin/', '!package-lock.json', '!package.json', '!src/']);
    expect(dockerignore).toContain('src/**/*.test.ts');
  });

  it('tells run-time imports from erased type-only ones', () => {
    const text = [
      "import type { A } from 'type-only';",
      "import { type B, type C } from 'all-named-type-only';",
      "import { type D, e } from 'mixed';",
      "import f from 'default';",
      "export { g } from './re-export.ts';",
      "export type { H } from './type-re-export.ts';",
      "const i = await import('dynamic');",
    ].join('\n');
    expect(runtimeImports('probe.ts', text)).toEqual(['mixed', 'default', './re-export.ts', 'dynamic']);
  });

  it('the image code loads only files inside src/ and production dependencies', async () => {
    const { dependencies, devDependencies } = packageJson.parse(JSON.parse(await readFile(join(repoRoot, 'package.json'), 'utf8')));
    const srcDir = join(repoRoot, 'src');
    const problems: string[] = [];
    const files = (await filesUnder(srcDir)).filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'));
    expect(files.length).toBeGreaterThan(10);
    for (const file of files) {
      for (const specifier of runtimeImports(file, await readFile(file, 'utf8'))) {
        const where = `${relative(repoRoot, file)} imports ${specifier}`;
        if (specifier.startsWith('.')) {
          const target = resolve(dirname(file), specifier);
          if (relative(srcDir, target).startsWith('..')) problems.push(`${where}: outside src/, not in the image`);
          else if (target.endsWith('.test.ts')) problems.push(`${where}: a test file, excluded by .dockerignore`);
          else await stat(target).catch(() => problems.push(`${where}: no such file`));
        } else if (!isBuiltin(specifier)) {
          const name = specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0]!;
          if (!(name in dependencies)) problems.push(`${where}: ${name in devDependencies ? 'a devDependency, omitted by npm ci --omit=dev' : 'not in package.json'}`);
        }
      }
    }
    expect(problems).toEqual([]);
  });
});
