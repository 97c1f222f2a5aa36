/** A CA and a server certificate for the listen IP, made with the openssl CLI (kept across restarts of DIR). */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export interface TlsMaterial {
  caFile: string;
  key: string;
  cert: string;
}

export async function ensureTls(dataDir: string, ip: string): Promise<TlsMaterial> {
  const dir = join(dataDir, 'tls');
  await mkdir(dir, { recursive: true });
  const caKey = join(dir, 'ca.key');
  const caFile = join(dir, 'ca.pem');
  const key = join(dir, 'server.key');
  const cert = join(dir, `server-${ip}.pem`);
  if (!existsSync(caFile)) {
    await execFileAsync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', caKey,
      '-out', caFile, '-days', '3650', '-subj', '/CN=Prism simulator CA', '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
  }
  if (!existsSync(cert)) {
    const csr = join(dir, 'server.csr');
    const ext = join(dir, `server-${ip}.ext`);
    await execFileAsync('openssl', [
      'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr,
      '-subj', '/CN=prism-simulator',
    ]);
    await writeFile(
      ext,
      `subjectAltName=IP:${ip},IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`,
    );
    await execFileAsync('openssl', [
      'x509', '-req', '-in', csr, '-CA', caFile, '-CAkey', caKey, '-CAcreateserial', '-out', cert, '-days', '825',
      '-extfile', ext,
    ]);
  }
  return { caFile, key: await readFile(key, 'utf8'), cert: await readFile(cert, 'utf8') };
}
