/**
 * The Prism client: one object that finds out what the endpoint speaks (v4 preferred; a 404 on the v4 cluster
 * list means a v3-only Prism) and sends every call to the matching backend.
 */
import { AppError, ErrorCode, isAppError } from '../lib/errors.ts';
import { type Logger, createLogger } from '../lib/log.ts';
import type { Region } from '../mover/types.ts';
import { PrismHttp, type RetryPolicy } from './http.ts';
import { isUuid } from './model.ts';
import { type TaskWaitOptions, defaultTaskWait } from './tasks.ts';
import type { ApiGeneration, ChangedRegionsRequest, ExportDiskRequest, PrismCapabilities, PrismClient, PrismConnection, Vm } from './types.ts';
import { V3Backend } from './v3.ts';
import { V4Backend } from './v4.ts';

export interface PrismClientOptions {
  logger?: Logger;
  retry?: Partial<RetryPolicy>;
  requestTimeoutMs?: number;
  taskWait?: Partial<TaskWaitOptions>;
  /** Use this generation instead of discovering one (e.g. force v3 on a PC that also speaks v4). */
  generation?: ApiGeneration;
}

type Backend = V3Backend | V4Backend;

export function createPrismClient(connection: PrismConnection, options: PrismClientOptions = {}): PrismClient {
  return new DiscoveringPrismClient(connection, options);
}

class DiscoveringPrismClient implements PrismClient {
  private readonly http: PrismHttp;
  private readonly v3: V3Backend;
  private readonly v4: V4Backend;
  private readonly forced: ApiGeneration | undefined;
  private discovered: Promise<PrismCapabilities> | undefined;

  constructor(connection: PrismConnection, options: PrismClientOptions) {
    const log = options.logger ?? createLogger({ name: 'prism' });
    this.http = new PrismHttp({
      endpoint: parseEndpoint(connection.endpoint),
      username: connection.username,
      password: connection.password,
      caPem: connection.caPem,
      insecureSkipTlsVerify: connection.insecureSkipTlsVerify,
      requestsPerSecond: connection.requestsPerSecond,
      logger: log,
      retry: options.retry,
      requestTimeoutMs: options.requestTimeoutMs,
    });
    const deps = { http: this.http, log, taskWait: { ...defaultTaskWait, ...options.taskWait } };
    this.v3 = new V3Backend(deps);
    this.v4 = new V4Backend(deps);
    this.forced = options.generation;
  }

  capabilities(signal?: AbortSignal): Promise<PrismCapabilities> {
    if (!this.discovered) {
      this.discovered = this.discover(signal);
      // A failed discovery (network, credentials) is not remembered: the next call tries again.
      this.discovered.catch(() => (this.discovered = undefined));
    }
    return this.discovered;
  }

  async listVms(options: { name?: string; signal?: AbortSignal } = {}): Promise<Vm[]> {
    return (await this.backend(options.signal)).listVms(options);
  }

  async getVm(uuid: string, signal?: AbortSignal): Promise<Vm> {
    try {
      return await (await this.backend(signal)).getVm(uuid, signal);
    } catch (err) {
      if (isAppError(err) && err.code === ErrorCode.NotFound) {
        throw new AppError(ErrorCode.NotFound, `VM ${uuid} does not exist`, { hint: 'list VMs with `sendense-nutanix vms`', cause: err });
      }
      throw err;
    }
  }

  async findVm(nameOrUuid: string, signal?: AbortSignal): Promise<Vm> {
    if (isUuid(nameOrUuid)) return this.getVm(nameOrUuid, signal);
    const matches = await this.listVms({ name: nameOrUuid, signal });
    if (matches.length === 1 && matches[0]) return matches[0];
    if (matches.length === 0) {
      throw new AppError(ErrorCode.NotFound, `no VM is named "${nameOrUuid}"`, { hint: 'check the name (exact, case-sensitive) or pass the VM UUID' });
    }
    throw new AppError(ErrorCode.InvalidInput, `${matches.length} VMs are named "${nameOrUuid}": ${matches.map((vm) => vm.uuid).join(', ')}`, {
      hint: 'pass the UUID of the one you mean',
    });
  }

  async createRecoveryPoint(request: Parameters<PrismClient['createRecoveryPoint']>[0]) {
    return (await this.backend(request.signal)).createRecoveryPoint(request);
  }

  async getRecoveryPoint(id: string, signal?: AbortSignal) {
    return (await this.backend(signal)).getRecoveryPoint(id, signal);
  }

  async listRecoveryPoints(options: { vmUuid: string; signal?: AbortSignal }) {
    return (await this.backend(options.signal)).listRecoveryPoints(options);
  }

  async deleteRecoveryPoint(id: string, signal?: AbortSignal): Promise<void> {
    return (await this.backend(signal)).deleteRecoveryPoint(id, signal);
  }

  async *changedRegions(request: ChangedRegionsRequest): AsyncIterable<Region> {
    // The recovery point says which API made it; it must be read through the same one.
    yield* this.backendFor(request.recoveryPoint.generation).changedRegions(request);
  }

  async prepareExport(request: Parameters<PrismClient['prepareExport']>[0]) {
    return (await this.backend(request.signal)).prepareExport(request);
  }

  async exportDisk(request: ExportDiskRequest) {
    return this.backendFor(request.recoveryPoint.generation).exportDisk(request);
  }

  async releaseExportVolumeGroups(exportTag: string, signal?: AbortSignal): Promise<string[]> {
    if (!(await this.capabilities(signal)).apiGenerations.includes('v4')) return [];
    return this.v4.releaseExportVolumeGroups(exportTag, signal);
  }

  close(): Promise<void> {
    return this.http.close();
  }

  private backendFor(generation: ApiGeneration): Backend {
    return generation === 'v4' ? this.v4 : this.v3;
  }

  private async backend(signal?: AbortSignal): Promise<Backend> {
    return this.backendFor((await this.capabilities(signal)).preferred);
  }

  private async discover(signal?: AbortSignal): Promise<PrismCapabilities> {
    if (this.forced === 'v3') return this.discoverV3(signal);
    try {
      const clusters = await this.v4.clusters(signal);
      return summarize(['v4', 'v3'], clusters, clusters.find((c) => c.isPrismCentral)?.version);
    } catch (err) {
      // A Prism without the v4 APIs answers 404 on them, like any unknown path.
      if (this.forced === undefined && isAppError(err) && err.code === ErrorCode.NotFound) return this.discoverV3(signal);
      throw err;
    }
  }

  private async discoverV3(signal?: AbortSignal): Promise<PrismCapabilities> {
    // One after the other: the first answer brings the session cookie the second reuses.
    const clusters = await this.v3.clusters(signal);
    // prism_central names the PC release (pc.2024.1.0.1); the PC's own cluster entry is the fallback.
    const pcVersion = (await this.v3.prismCentralVersion(signal)) ?? clusters.find((c) => c.isPrismCentral)?.version;
    return summarize(['v3'], clusters, pcVersion);
  }
}

function summarize(apiGenerations: ApiGeneration[], clusters: PrismCapabilities['clusters'], pcVersion: string | undefined): PrismCapabilities {
  return {
    ...(pcVersion ? { pcVersion } : {}),
    apiGenerations,
    preferred: apiGenerations[0] ?? 'v3',
    // v4: dataprotection compute-changed-regions; v3: PE data/changed_regions on the same endpoint.
    changedRegionTracking: true,
    clusters,
  };
}

/** https://host[:port] with no path; a bare host gets https and Prism's port 9440. */
export function parseEndpoint(text: string): string {
  const withScheme = /^[a-z]+:\/\//i.test(text) ? text : `https://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new AppError(ErrorCode.InvalidInput, `--endpoint: "${text}" is not a URL`, { hint: 'use https://host:9440' });
  }
  if (url.protocol !== 'https:') {
    throw new AppError(ErrorCode.InvalidInput, `--endpoint: "${text}" is not https`, { hint: 'Prism only serves HTTPS: use https://host:9440' });
  }
  return `https://${url.hostname.includes(':') && !url.hostname.startsWith('[') ? `[${url.hostname}]` : url.hostname}:${url.port || '9440'}`;
}
