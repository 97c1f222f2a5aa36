/** Ports for test servers that cannot listen on port 0 and report it themselves (etcd, kube-apiserver, qemu-nbd). */
import { createServer } from 'node:net';

/** A loopback port free right now: the kernel picks it, so it cannot collide the way pid-derived ports do. */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolvePort(address.port) : reject(new Error('no port'))));
    });
  });
}
