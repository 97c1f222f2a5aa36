/** What every mover command shares: Prism credentials from env, the repository location, the termination message. */
import { access, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AppError, ErrorCode } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { createPrismClient } from '../prism/client.ts';
import type { PrismClient } from '../prism/types.ts';
import type { VmRef } from '../repository/index.ts';
import { credentialEnv, defaultTerminationLogPath, terminationLogEnv, type MoverRequest, type TerminationMessage } from './contract.ts';

/** Prism client from the request's endpoint and the credentials the Job maps from the NutanixCluster's Secrets. */
export function prismFromEnv(target: { endpoint: string; insecureSkipTlsVerify: boolean }, env: NodeJS.ProcessEnv, log: Logger): PrismClient {
  const username = env[credentialEnv.username];
  const password = env[credentialEnv.password];
  if (!username || !password) {
    throw new AppError(ErrorCode.Unauthenticated, `${credentialEnv.username} and ${credentialEnv.password} must be set`, {
      hint: "the Job maps them from the NutanixCluster's credentialsSecretRef; check that Secret and its keys",
    });
  }
  const caPem = env[credentialEnv.caPem];
  return createPrismClient(
    { endpoint: target.endpoint, username, password, ...(caPem ? { caPem } : {}), ...(target.insecureSkipTlsVerify ? { insecureSkipTlsVerify: true } : {}) },
    { logger: log },
  );
}

/** The VM's folder reference inside the mounted repository. */
export function repositoryVm(request: Extract<MoverRequest, { vm: unknown }>): VmRef {
  return { repo: join(request.repository.root, request.repository.path), clusterUuid: request.vm.clusterUuid, vmUuid: request.vm.uuid };
}

/** Writes the result where the kubelet picks up the termination message, when that file exists (in a pod it does). */
export async function writeTerminationMessage(result: TerminationMessage, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  const path = env[terminationLogEnv] || defaultTerminationLogPath;
  try {
    await access(path);
  } catch {
    return undefined;
  }
  await writeFile(path, JSON.stringify(result).slice(0, 4000));
  return path;
}
