/**
 * The Prism connection flags every command that talks to Prism takes (vms, backup, …), and their resolution
 * into a PrismConnection: credentials from flags, a password file or the environment; TLS trust from a CA file.
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { z } from 'zod';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { parseEndpoint } from '../prism/client.ts';
import type { PrismConnection } from '../prism/types.ts';

const connectionFlagsSchema = z.object({
  endpoint: z.string().min(1),
  username: z.string().min(1).optional(),
  passwordFile: z.string().min(1).optional(),
  caFile: z.string().min(1).optional(),
  insecureSkipTlsVerify: z.boolean().optional(),
});

const connectionEnvSchema = z.object({
  NUTANIX_USERNAME: z.string().min(1).optional(),
  NUTANIX_PASSWORD: z.string().min(1).optional(),
});

/** Adds --endpoint, --username, --password-file, --ca-file and --insecure-skip-tls-verify to a command. */
export function addConnectionOptions(command: Command): Command {
  return command
    .requiredOption('--endpoint <url>', 'Prism Central (or Element) endpoint, e.g. https://prism.example.com:9440')
    .option('--username <name>', 'Prism user (default: $NUTANIX_USERNAME)')
    .option('--password-file <file>', 'file holding the Prism password (default: $NUTANIX_PASSWORD)')
    .option('--ca-file <file>', 'PEM bundle of the CA(s) that signed the Prism certificate')
    .option('--insecure-skip-tls-verify', 'do not verify the Prism certificate (labs only)');
}

async function readFlagFile(path: string, flag: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new AppError(ErrorCode.InvalidInput, `${flag}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? String(err)})`, {
      hint: `point ${flag} at a readable file`,
      cause: err,
    });
  }
}

/** Turns parsed connection flags (commander's opts()) plus the environment into a PrismConnection. */
export async function connectionFromFlags(flags: unknown, env: NodeJS.ProcessEnv = process.env): Promise<PrismConnection> {
  const parsed = connectionFlagsSchema.safeParse(flags);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new AppError(ErrorCode.InvalidInput, `invalid connection flag --${String(issue?.path[0] ?? '?')}: ${issue?.message ?? 'invalid'}`, {
      hint: 'see --help',
    });
  }
  const options = parsed.data;
  const environment = connectionEnvSchema.parse({ NUTANIX_USERNAME: env.NUTANIX_USERNAME || undefined, NUTANIX_PASSWORD: env.NUTANIX_PASSWORD || undefined });
  if (options.caFile && options.insecureSkipTlsVerify) {
    throw new AppError(ErrorCode.InvalidInput, '--ca-file and --insecure-skip-tls-verify contradict each other', { hint: 'pass one of them' });
  }
  const username = options.username ?? environment.NUTANIX_USERNAME;
  if (!username) {
    throw new AppError(ErrorCode.InvalidInput, 'no Prism username', { hint: 'pass --username or set NUTANIX_USERNAME' });
  }
  // A password file ends with a newline more often than not; the password itself never does.
  const password = options.passwordFile ? (await readFlagFile(options.passwordFile, '--password-file')).replace(/\r?\n$/, '') : environment.NUTANIX_PASSWORD;
  if (!password) {
    throw new AppError(ErrorCode.InvalidInput, 'no Prism password', { hint: 'pass --password-file or set NUTANIX_PASSWORD' });
  }
  const caPem = options.caFile ? await readFlagFile(options.caFile, '--ca-file') : undefined;
  if (caPem !== undefined && !caPem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new AppError(ErrorCode.InvalidInput, `--ca-file: ${options.caFile} holds no PEM certificate`, { hint: 'pass the CA bundle in PEM form' });
  }
  return {
    endpoint: parseEndpoint(options.endpoint),
    username,
    password,
    ...(caPem ? { caPem } : {}),
    ...(options.insecureSkipTlsVerify ? { insecureSkipTlsVerify: true } : {}),
  };
}
