/*
 * The self-signed certificate the listeners offer when none is configured.
 *
 * Without `tls.cert` and `tls.key` a self-signed certificate for `hostname` is made on first start
 * and kept in dataDir/tls, so every later start (and every client that pinned it) sees the same
 * one. `ensureSelfSigned` makes it at start; `readSelfSigned` reads it back (a reload that drops
 * `tls.cert` goes back to it). Configured certificates are read by ingress-certificates.ts.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import type { Config } from '../mta-config-schema.js';

export interface TlsMaterial {
  key: string;
  cert: string;
  /** Where the certificate came from, for the log. */
  source: string;
}

const files = (config: Config) => {
  const dir = join(config.dataDir, 'tls');
  return { dir, certFile: join(dir, 'self-signed.crt'), keyFile: join(dir, 'self-signed.key') };
};

/** The self-signed pair made at an earlier start; null if there is none yet. */
export function readSelfSigned(config: Config): TlsMaterial | null {
  const { certFile, keyFile } = files(config);
  try {
    return { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8'), source: certFile };
  } catch {
    return null;
  }
}

export async function ensureSelfSigned(config: Config): Promise<TlsMaterial> {
  const { dir, certFile, keyFile } = files(config);
  try {
    return { cert: await readFile(certFile, 'utf8'), key: await readFile(keyFile, 'utf8'), source: certFile };
  } catch {
    // not made yet
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const now = new Date();
  const pems = await generate([{ name: 'commonName', value: config.hostname }], {
    keySize: 2048,
    algorithm: 'sha256',
    notBeforeDate: new Date(now.getTime() - 60_000),
    notAfterDate: new Date(now.getTime() + 10 * 365 * 86_400_000),
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 2, value: config.hostname }, { type: 7, ip: '127.0.0.1' }] },
    ],
  } as never);
  await writeFile(keyFile + '.tmp', pems.private, { mode: 0o600 });
  await writeFile(certFile + '.tmp', pems.cert, { mode: 0o600 });
  await rename(keyFile + '.tmp', keyFile);
  await rename(certFile + '.tmp', certFile);
  return { cert: pems.cert, key: pems.private, source: `${certFile} (generated)` };
}
