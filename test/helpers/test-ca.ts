/*
 * A certificate authority made for one test run, and server certificates it signs, so TLS
 * verification (MTA-STS, require-verified) can be exercised against loopback servers.
 */
import { writeFile } from 'node:fs/promises';
import { generate } from 'selfsigned';

export interface TestCa {
  cert: string;
  key: string;
  /** A key and certificate for these DNS names, signed by this CA. */
  issue(names: string[]): Promise<{ key: string; cert: string }>;
  /** Writes the CA certificate to `path` (for delivery.tls.caFile). */
  save(path: string): Promise<string>;
}

export async function makeTestCa(): Promise<TestCa> {
  const notBeforeDate = new Date(Date.now() - 60_000);
  const ca = await generate([{ name: 'commonName', value: 'Ichidan Test CA' }], {
    keySize: 2048,
    algorithm: 'sha256',
    notBeforeDate,
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    ],
  } as never);
  return {
    cert: ca.cert,
    key: ca.private,
    async issue(names) {
      const leaf = await generate([{ name: 'commonName', value: names[0] }], {
        keySize: 2048,
        algorithm: 'sha256',
        notBeforeDate,
        ca: { key: ca.private, cert: ca.cert },
        extensions: [
          { name: 'basicConstraints', cA: false },
          { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
          { name: 'extKeyUsage', serverAuth: true },
          { name: 'subjectAltName', altNames: names.map((value) => ({ type: 2, value })) },
        ],
      } as never);
      return { key: leaf.private, cert: leaf.cert };
    },
    async save(path) {
      await writeFile(path, ca.cert);
      return path;
    },
  };
}
