/**
 * Node's error codes for a server certificate that does not verify against the trusted CAs: a configuration
 * problem (wrong or missing CA), never worth a retry. Shared by the Prism and the Kubernetes clients.
 */
const untrustedCertificateCodes: ReadonlySet<string> = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

export function isUntrustedCertificateCode(code: string | undefined): code is string {
  return code !== undefined && untrustedCertificateCodes.has(code);
}
