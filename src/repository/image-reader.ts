/**
 * Reads guest bytes of a restore-point image (through its whole backing chain, as a restore would see them):
 * qemu-nbd --read-only serves the qcow2, the data path's NBD client reads it. Kept behind this small interface
 * so verify does not depend on how the bytes are fetched.
 */
import { NbdClient } from '../nbd/client.ts';
import { startQemuNbd } from '../nbd/qemu-nbd.ts';

export interface ImageReader {
  readonly sizeBytes: number;
  read(offset: number, length: number, signal?: AbortSignal): Promise<Buffer>;
  close(): Promise<void>;
}

export async function openImageReader(imagePath: string, signal?: AbortSignal): Promise<ImageReader> {
  const server = await startQemuNbd({ image: imagePath, format: 'qcow2', shared: 1 }, signal);
  let client: NbdClient;
  try {
    client = await NbdClient.connect({ endpoint: { socketPath: server.socketPath }, metaContexts: [], signal });
  } catch (err) {
    await server.stop();
    throw err;
  }
  return {
    sizeBytes: client.sizeBytes,
    read: async (offset, length, readSignal) => {
      const target = Buffer.allocUnsafe(length);
      await client.read(offset, length, target, { signal: readSignal });
      return target;
    },
    close: async () => {
      try {
        await client.close();
      } finally {
        await server.stop();
      }
    },
  };
}
