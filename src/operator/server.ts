/** The operator's HTTP endpoints: /metrics (Prometheus text), /healthz (liveness), /readyz (readiness). */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

export interface ProbeResult {
  ok: boolean;
  /** One line per check, shown in the probe's body (like kube-apiserver's ?verbose). */
  details: string[];
}

export interface HttpEndpoints {
  metrics?: Registry;
  healthz?: () => ProbeResult;
  readyz?: () => ProbeResult;
}

export interface RunningServer {
  port: number;
  close(): Promise<void>;
}

/** Listens on host:port (port 0 = any free port) and serves the endpoints given. */
export async function startHttpServer(host: string, port: number, endpoints: HttpEndpoints): Promise<RunningServer> {
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end();
      return;
    }
    if (path === '/metrics' && endpoints.metrics) {
      const registry = endpoints.metrics;
      registry.metrics().then(
        (text) => res.writeHead(200, { 'Content-Type': registry.contentType }).end(text),
        (err: unknown) => res.writeHead(500).end(String(err)),
      );
      return;
    }
    const probe = path === '/healthz' ? endpoints.healthz : path === '/readyz' ? endpoints.readyz : undefined;
    if (!probe) {
      res.writeHead(404).end('not found\n');
      return;
    }
    const result = probe();
    res.writeHead(result.ok ? 200 : 503, { 'Content-Type': 'text/plain' }).end(`${result.details.join('\n')}\n${result.ok ? 'ok' : 'failed'}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
