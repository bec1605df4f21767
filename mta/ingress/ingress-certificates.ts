/*
 * The certificates the listeners offer, read from the files the config names, checked, and put
 * in force on a running listener without a restart.
 *
 * Takes: the config (`tls.cert`/`tls.key`, `tls.sni`, `listeners[].cert`/`listeners[].key`) and the
 *   self-signed pair (ingress-tls.ts) for when `tls.cert` is not set.
 * Gives: `loadCertificates`, which reads every file and checks each pair (a PEM certificate, a PEM
 *   key, the key belonging to the certificate) or throws a `CertificateError` whose problems each
 *   name the key at fault, so a reload with a broken renewal keeps the pairs in force (and warns,
 *   naming the key, of a certificate past its end or not for its SNI name); `checkCertificates`,
 *   the same for `ichidan check-config`; `certificateFiles`, the files to watch for renewals;
 *   `offerCertificates`, which makes a listener's smtp-server offer a set to its next handshakes
 *   (connections already encrypted keep theirs).
 * Choosing: a client's SNI name picks the pair of `tls.sni` for that name, or for "*.<parent>"; any
 *   other name, or none, gets the listener's own pair (`listeners[].cert`), else `tls.cert`.
 * Reads: the certificate and key files, at start and at every reload (SIGHUP, `ichidan reload`,
 *   admin.watchConfig); `ichidan check-config` reads them too.
 */
import { readFileSync } from 'node:fs';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { createSecureContext, type SecureContext } from 'node:tls';
import { domainToASCII } from 'node:url';
import type { SMTPServer } from 'smtp-server';
import type { Config } from '../mta-config-schema.js';
import { readSelfSigned, type TlsMaterial } from './ingress-tls.js';

export class CertificateError extends Error {
  readonly code = 'ICHIDAN_ERR_CERTIFICATE';
  constructor(readonly problems: string[]) {
    super(problems.join('; '));
  }
}

/** What one listener offers: its default pair, and the pairs picked by SNI name. */
export interface ListenerCertificates {
  pair: TlsMaterial;
  byName: ReadonlyMap<string, SecureContext>;
}

export interface Certificates {
  /** The set for a listener, by its name. */
  of(listener: string): ListenerCertificates;
  /** What is offered but looks wrong (expired, not for its SNI name), each naming its key. */
  warnings: string[];
}

/**
 * Reads one pair; its problems name `where.cert` / `where.key`. A certificate past its end, or not
 * for `name` (an SNI name), is a warning: it is still offered.
 */
function readPair(certFile: string, keyFile: string, where: { cert: string; key: string; name?: string }, problems: string[], warnings: string[]): { material: TlsMaterial; context: SecureContext } | null {
  const read = (file: string, key: string) => {
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      problems.push(`${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return null;
    }
  };
  const cert = read(certFile, where.cert);
  const key = read(keyFile, where.key);
  if (cert === null || key === null) return null;
  let good = true;
  try {
    const x509 = new X509Certificate(cert);
    if (Date.parse(x509.validTo) < Date.now()) warnings.push(`${where.cert}: the certificate in ${certFile} expired on ${x509.validTo}`);
    // A wildcard name is checked with a name it covers.
    const probe = where.name?.startsWith('*.') ? `sni-check${where.name.slice(1)}` : where.name;
    if (probe && x509.checkHost(probe) === undefined) warnings.push(`${where.cert}: the certificate in ${certFile} is not for ${where.name}`);
  } catch {
    problems.push(`${where.cert}: ${certFile} holds no PEM certificate`);
    good = false;
  }
  try {
    createPrivateKey(key);
  } catch {
    problems.push(`${where.key}: ${keyFile} holds no PEM private key (or it is encrypted)`);
    good = false;
  }
  if (!good) return null;
  try {
    return { material: { cert, key, source: certFile }, context: createSecureContext({ cert, key }) };
  } catch (err) {
    problems.push(`${where.key}: ${keyFile} is not the key of the certificate in ${certFile} (${(err as Error).message.replace(/^error:[^:]*:[^:]*::/, '')})`);
    return null;
  }
}

const normalName = (name: string) => domainToASCII(name.replace(/\.$/, '')).toLowerCase() || name.toLowerCase();

/**
 * Every certificate the config names, read and checked; throws a `CertificateError` naming the
 * keys of all the problems found. `selfSigned` stands in for `tls.cert` when that is not set.
 */
export function loadCertificates(config: Config, selfSigned: TlsMaterial | null = readSelfSigned(config)): Certificates {
  const problems: string[] = [];
  const warnings: string[] = [];
  let fallback: TlsMaterial | null = null;
  if (config.tls.cert !== undefined && config.tls.key !== undefined) {
    fallback = readPair(config.tls.cert, config.tls.key, { cert: 'tls.cert', key: 'tls.key' }, problems, warnings)?.material ?? null;
  } else if (selfSigned) {
    fallback = selfSigned;
  } else {
    problems.push('tls.cert: not set, and no self-signed certificate was made at start (restart to make one)');
  }
  const byName = new Map<string, SecureContext>();
  for (const [name, pair] of Object.entries(config.tls.sni)) {
    const where = `tls.sni["${name}"]`;
    const read = readPair(pair.cert, pair.key, { cert: `${where}.cert`, key: `${where}.key`, name }, problems, warnings);
    if (read) byName.set(normalName(name), read.context);
  }
  const own = new Map<string, TlsMaterial>();
  config.listeners.forEach((l, i) => {
    if (l.cert === undefined || l.key === undefined) return;
    const read = readPair(l.cert, l.key, { cert: `listeners[${i}].cert`, key: `listeners[${i}].key` }, problems, warnings);
    if (read) own.set(l.name, read.material);
  });
  if (problems.length > 0 || !fallback) throw new CertificateError(problems);
  const base = fallback;
  const sets = new Map<string, ListenerCertificates>();
  return {
    warnings,
    of(listener) {
      let set = sets.get(listener);
      if (!set) sets.set(listener, set = { pair: own.get(listener) ?? base, byName });
      return set;
    },
  };
}

/** Every certificate and key file the config names (watched for renewals under admin.watchConfig). */
export function certificateFiles(config: Config): string[] {
  const pairs = [config.tls, ...Object.values(config.tls.sni), ...config.listeners];
  return [...new Set(pairs.flatMap((p) => [p.cert, p.key]).filter((f): f is string => f !== undefined))];
}

/** What `loadCertificates` would report, for `ichidan check-config` (no self-signed pair is needed there). */
export function checkCertificates(config: Config): { problems: string[]; warnings: string[] } {
  try {
    return { problems: [], warnings: loadCertificates(config, { cert: '', key: '', source: '(self-signed, made at start)' }).warnings };
  } catch (err) {
    return { problems: err instanceof CertificateError ? err.problems : [(err as Error).message], warnings: [] };
  }
}

/** The pair of `tls.sni` for `servername`: its own, else its parent's wildcard. */
export function pickByName(byName: ReadonlyMap<string, SecureContext>, servername: string): SecureContext | undefined {
  const name = normalName(servername);
  const exact = byName.get(name);
  if (exact) return exact;
  const dot = name.indexOf('.');
  return dot > 0 ? byName.get(`*${name.slice(dot)}`) : undefined;
}

/**
 * Makes `server` offer `set` to the handshakes that start from now on: the default pair becomes
 * its default context, and its SNI lookup reads the names of `set`.
 */
export function offerCertificates(server: SMTPServer, set: ListenerCertificates): void {
  const options = server.options as SMTPServer['options'] & { SNICallback?: unknown };
  // smtp-server asks this for every handshake it runs (STARTTLS and implicit TLS); undefined: its default context.
  options.SNICallback = (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => cb(null, pickByName(set.byName, servername));
  server.updateSecureContext({ key: set.pair.key, cert: set.pair.cert });
}
