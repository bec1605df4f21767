/*
 * MTA-STS (RFC 8461): what a recipient domain says about TLS toward its MX hosts.
 *
 * Takes a recipient domain; gives its policy (mode enforce | testing | none, the MX patterns,
 * max_age) or null when it has none we can use. The `_mta-sts.<domain>` TXT record is asked of
 * the configured resolver only; the policy is fetched from
 * https://mta-sts.<domain>/.well-known/mta-sts.txt at an address that same resolver gave (never the
 * system resolver), with SNI and certificate verification for `mta-sts.<domain>`, no redirects,
 * a 10 s bound, at most 64 KB, Content-Type text/plain.
 * Policies are kept in memory per domain until max_age passes or the TXT id changes (RFC 8461
 * 5.1). When the record cannot be read or the fetch fails, an unexpired cached policy still
 * applies (3.3) — that is what keeps an attacker who blocks the fetch from downgrading delivery.
 * The cache is not written to disk: after a restart a domain's policy is fetched again before
 * its first delivery, so the one window a persistent cache would close is an attacker who
 * already blocks the fetch at the moment the process starts (RFC 8461 10.2 accepts the same
 * window for a first contact).
 * Network: DNS (TXT, A, AAAA) through dns.servers; HTTPS to mta-sts.<domain>.
 * Settings: delivery.mtaSts.*, delivery.tls.caFile.
 */
import type { Resolver } from 'node:dns/promises';
import { request } from 'node:https';

export type StsMode = 'enforce' | 'testing' | 'none';

export interface StsPolicy {
  mode: StsMode;
  /** MX patterns, lower case: "mx.example.com" or "*.example.com". */
  mx: string[];
  /** Seconds. */
  maxAge: number;
}

interface Cached {
  id: string;
  policy: StsPolicy;
  expiresAt: number;
}

const MAX_POLICY_BYTES = 64 * 1024;
/** RFC 8461 3.2: max_age is at most 31557600 seconds (about a year). */
const MAX_AGE_LIMIT = 31_557_600;
const FETCH_TIMEOUT_MS = 10_000;

/**
 * The policy id of the `_mta-sts` TXT answer (each record given as its character-strings), or
 * null: records not starting with "v=STSv1;" are ignored, and anything but exactly one valid
 * record means no policy is announced (RFC 8461 3.1).
 */
export function parseStsRecord(records: string[][]): string | null {
  const candidates = records.map((r) => r.join('')).filter((r) => /^v=STSv1;/.test(r));
  if (candidates.length !== 1) return null;
  let id: string | null = null;
  for (const field of candidates[0].split(';').map((f) => f.trim()).filter(Boolean)) {
    const m = /^([A-Za-z0-9_.-]+)=(.*)$/.exec(field);
    if (!m) return null;
    if (m[1] === 'id' && id === null) id = m[2];
  }
  return id !== null && /^[A-Za-z0-9]{1,32}$/.test(id) ? id : null;
}

/** A policy body (RFC 8461 3.2), or the reason it is not one. Unknown keys are ignored. */
export function parseStsPolicy(text: string): StsPolicy | string {
  const fields = new Map<string, string>();
  const mx: string[] = [];
  for (const line of text.split(/\r?\n/)) {
    if (line.trim() === '') continue;
    const m = /^([A-Za-z0-9_.-]+):[ \t]*(.*?)[ \t]*$/.exec(line);
    if (!m) return `malformed line "${line.slice(0, 80)}"`;
    const key = m[1].toLowerCase();
    if (key === 'mx') mx.push(m[2].toLowerCase().replace(/\.$/, ''));
    // A repeated key other than mx: the first one counts.
    else if (!fields.has(key)) fields.set(key, m[2]);
  }
  if (fields.get('version') !== 'STSv1') return 'version is not STSv1';
  const mode = fields.get('mode');
  if (mode !== 'enforce' && mode !== 'testing' && mode !== 'none') return `unknown mode "${mode ?? ''}"`;
  const age = fields.get('max_age');
  if (age === undefined || !/^\d{1,10}$/.test(age)) return 'max_age missing or not a number';
  const maxAge = Math.min(Number(age), MAX_AGE_LIMIT);
  if (mode !== 'none' && mx.length === 0) return `mode ${mode} without any mx`;
  if (mx.some((p) => !/^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(p))) return 'malformed mx pattern';
  return { mode, mx, maxAge };
}

/**
 * RFC 8461 4.1: an MX host matches a pattern exactly, or a "*.example.com" pattern when the
 * wildcard stands for exactly one leftmost label ("mail.example.com", not "example.com" nor
 * "a.b.example.com").
 */
export function mxMatches(patterns: string[], host: string): boolean {
  const name = host.toLowerCase().replace(/\.$/, '');
  return patterns.some((p) => {
    if (!p.startsWith('*.')) return p === name;
    const dot = name.indexOf('.');
    return dot > 0 && name.slice(dot + 1) === p.slice(2);
  });
}

/** Policies by domain; lives as long as the process so a config reload keeps them. */
export class StsPolicyCache {
  readonly #byDomain = new Map<string, Cached>();

  get(domain: string, now: number): Cached | undefined {
    const c = this.#byDomain.get(domain);
    if (c && c.expiresAt <= now) {
      this.#byDomain.delete(domain);
      return undefined;
    }
    return c;
  }

  set(domain: string, entry: Cached): void {
    this.#byDomain.set(domain, entry);
  }
}

export interface MtaStsOptions {
  /** CA certificates for the HTTPS fetch; undefined: Node's store. */
  ca: string[] | undefined;
  port: number;
  now?: () => number;
}

export type StsLookup =
  | { policy: StsPolicy; source: 'fetched' | 'cached' }
  | { policy: null; reason: string };

export class MtaSts {
  readonly #now: () => number;

  constructor(private readonly resolver: Resolver, private readonly cache: StsPolicyCache, private readonly opts: MtaStsOptions) {
    this.#now = opts.now ?? Date.now;
  }

  async lookup(domain: string): Promise<StsLookup> {
    const name = domain.toLowerCase();
    const cached = this.cache.get(name, this.#now());
    let id: string | null;
    try {
      id = parseStsRecord(await this.resolver.resolveTxt(`_mta-sts.${name}`));
    } catch (err) {
      id = null;
      if (!cached) return { policy: null, reason: `no _mta-sts record (${(err as NodeJS.ErrnoException).code ?? 'error'})` };
    }
    if (cached && (id === null || id === cached.id)) return { policy: cached.policy, source: 'cached' };
    if (id === null) return { policy: null, reason: 'no valid _mta-sts record' };
    const fetched = await this.#fetch(name);
    if (typeof fetched === 'string') {
      if (cached) return { policy: cached.policy, source: 'cached' };
      return { policy: null, reason: `policy fetch failed: ${fetched}` };
    }
    this.cache.set(name, { id, policy: fetched, expiresAt: this.#now() + fetched.maxAge * 1000 });
    return { policy: fetched, source: 'fetched' };
  }

  async #fetch(domain: string): Promise<StsPolicy | string> {
    const host = `mta-sts.${domain}`;
    const [v4, v6] = await Promise.allSettled([this.resolver.resolve4(host), this.resolver.resolve6(host)]);
    const addresses = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
    if (addresses.length === 0) return `${host} has no address`;
    let last = '';
    for (const address of addresses) {
      const body = await this.#get(host, address);
      if (typeof body !== 'string') return body.text === null ? body.error : parsePolicyOrReason(body.text);
      last = body;
    }
    return last;
  }

  /** The body, or { error } for an answer that is not a policy; a string when the host could not be asked. */
  #get(host: string, address: string): Promise<{ text: string; error?: never } | { text: null; error: string } | string> {
    return new Promise((resolve) => {
      let settled = false;
      const done = (v: { text: string } | { text: null; error: string } | string) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        req.destroy();
        resolve(v as never);
      };
      const req = request({
        host: address,
        port: this.opts.port,
        path: '/.well-known/mta-sts.txt',
        method: 'GET',
        servername: host,
        headers: { Host: host, Accept: 'text/plain' },
        ca: this.opts.ca,
        rejectUnauthorized: true,
        agent: false,
      }, (res) => {
        if (res.statusCode !== 200) return done({ text: null, error: `HTTP ${res.statusCode} from ${host}` });
        const type = String(res.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
        if (type !== 'text/plain') return done({ text: null, error: `Content-Type "${type}" from ${host}` });
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_POLICY_BYTES) return done({ text: null, error: `policy from ${host} is larger than 64 KB` });
          chunks.push(c);
        });
        res.on('end', () => done({ text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', (err) => done(`${host}[${address}]: ${err.message}`));
      });
      const timer = setTimeout(() => done(`${host}[${address}]: no policy within ${FETCH_TIMEOUT_MS / 1000} s`), FETCH_TIMEOUT_MS);
      req.on('error', (err) => done(`${host}[${address}]: ${(err as NodeJS.ErrnoException).code ?? err.message}`));
      req.end();
    });
  }
}

function parsePolicyOrReason(text: string): StsPolicy | string {
  const parsed = parseStsPolicy(text);
  return typeof parsed === 'string' ? `invalid policy: ${parsed}` : parsed;
}
