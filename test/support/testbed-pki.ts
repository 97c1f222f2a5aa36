/**
 * Throw-away PKI for the test bed's kube-apiserver, made with the real openssl CLI: a CA, a serving certificate
 * for 127.0.0.1, an admin client certificate in `system:masters`, and the service-account token signing key.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { AppError, ErrorCode } from '../../src/lib/errors.ts';

const execFileAsync = promisify(execFile);

export interface TestbedPki {
  caCert: string;
  caKey: string;
  caPem: string;
  servingCert: string;
  servingKey: string;
  adminCert: string;
  adminKey: string;
  serviceAccountPrivateKey: string;
  serviceAccountPublicKey: string;
}

interface CertificateRequest {
  name: string;
  subject: { CN: string; O?: string };
  extensions: string[];
  /** Signed by this CA; absent for the self-signed CA itself. */
  issuer?: { cert: string; key: string };
}

/** One certificate and its P-256 key from a config file written here, so the host's openssl.cnf defaults never leak in. */
async function issueCertificate(dir: string, request: CertificateRequest, signal: AbortSignal): Promise<{ cert: string; key: string }> {
  const config = join(dir, `${request.name}.cnf`);
  const cert = join(dir, `${request.name}.crt`);
  const key = join(dir, `${request.name}.key`);
  const subject = Object.entries(request.subject).map(([field, value]) => `${field} = ${value}`);
  await writeFile(
    config,
    ['[req]', 'distinguished_name = dn', 'prompt = no', 'x509_extensions = ext', '[dn]', ...subject, '[ext]', ...request.extensions, ''].join('\n'),
  );
  const args = ['req', '-x509', '-new', '-config', config, '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  args.push('-keyout', key, '-out', cert, '-days', '2');
  if (request.issuer) args.push('-CA', request.issuer.cert, '-CAkey', request.issuer.key);
  try {
    await execFileAsync('openssl', args, { signal });
  } catch (err) {
    throw new AppError(ErrorCode.Internal, `openssl could not issue the test bed certificate ${request.name}`, {
      cause: err,
      hint: 'install openssl >= 3.0 (apt-get install openssl); `req -CA` needs 3.0',
    });
  }
  return { cert, key };
}

export async function createTestbedPki(dir: string, signal: AbortSignal): Promise<TestbedPki> {
  const ca = await issueCertificate(
    dir,
    {
      name: 'ca',
      subject: { CN: 'sendense-testbed-ca' },
      extensions: ['basicConstraints = critical,CA:TRUE', 'keyUsage = critical,keyCertSign,cRLSign', 'subjectKeyIdentifier = hash'],
    },
    signal,
  );
  const leafExtensions = (usage: string, extra: string[] = []) => [
    'basicConstraints = critical,CA:FALSE',
    'keyUsage = critical,digitalSignature',
    `extendedKeyUsage = ${usage}`,
    'authorityKeyIdentifier = keyid',
    ...extra,
  ];
  const [serving, admin] = await Promise.all([
    issueCertificate(
      dir,
      {
        name: 'apiserver',
        subject: { CN: 'kube-apiserver' },
        extensions: leafExtensions('serverAuth', ['subjectAltName = IP:127.0.0.1,DNS:localhost']),
        issuer: ca,
      },
      signal,
    ),
    // O=system:masters is the group that RBAC's built-in cluster-admin binding grants everything.
    issueCertificate(
      dir,
      { name: 'admin', subject: { CN: 'sendense-testbed-admin', O: 'system:masters' }, extensions: leafExtensions('clientAuth'), issuer: ca },
      signal,
    ),
  ]);

  const serviceAccount = generateKeyPairSync('ec', {
    namedCurve: 'prime256v1',
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const serviceAccountPrivateKey = join(dir, 'service-account.key');
  const serviceAccountPublicKey = join(dir, 'service-account.pub');
  await writeFile(serviceAccountPrivateKey, serviceAccount.privateKey, { mode: 0o600 });
  await writeFile(serviceAccountPublicKey, serviceAccount.publicKey);

  return {
    caCert: ca.cert,
    caKey: ca.key,
    caPem: await readFile(ca.cert, 'utf8'),
    servingCert: serving.cert,
    servingKey: serving.key,
    adminCert: admin.cert,
    adminKey: admin.key,
    serviceAccountPrivateKey,
    serviceAccountPublicKey,
  };
}
