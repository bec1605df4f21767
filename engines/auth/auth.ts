/*
 * mailauth — sender authentication of inbound mail: SPF, DKIM, DMARC and ARC, verified with the
 * `mailauth` library.
 *
 * Takes: the spool file (streamed once through mailauth's DKIM verifier, which keeps the header
 *   block and hashes the body as it passes), the client IP, the HELO name and the envelope sender
 *   of the SMTP transaction. Nothing is taken from Received: or Return-Path: headers: a peer
 *   writes those. The client's PTR name is not used: SPF's `ptr` mechanism and `%{p}` macro do
 *   their own, forward-confirmed lookups (RFC 7208 §5.5, §7.3). Mail submitted by an
 *   authenticated user is not checked and comes back clean with `detail.skipped`.
 * Gives: one Authentication-Results header (RFC 8601), folded as mailauth folds it, with this
 *   host's name as authserv-id; `detail` with the spf, dkim, dmarc and arc results and any DNS
 *   failure. The outcome is a violation only when DMARC fails and the sender's domain asks for
 *   reject or quarantine, after its pct sampling (RFC 7489 §6.6.4: a message outside the sample
 *   gets the next lower policy); what each of those does is the operator's `onDmarcReject` /
 *   `onDmarcQuarantine`. A DNS failure (timeout, SERVFAIL) is a temperror in the header and in
 *   `detail.temperror`, and the outcome stays clean: the sender is not punished for DNS trouble.
 *   An ARC chain is verified and reported; it never overrides a DMARC failure, since that needs a
 *   list of trusted sealers this engine does not keep. BIMI is not looked up.
 * Network: DNS only, only through the configured resolvers (`dns.servers`); without them the
 *   engine answers `refused` and looks nothing up. A lookup still running at the deadline is
 *   abandoned, so mailauth winds down at once.
 * RFCs: 7208 (SPF), 6376 (DKIM), 7489 (DMARC), 8617 (ARC), 8601 (Authentication-Results).
 * Settings: engines[].onDmarcReject, onDmarcQuarantine, timeout (10s), maxSize (25MB).
 * Version: the mailauth library's own.
 */
import type { promises as dns } from 'node:dns';
import { createRequire } from 'node:module';
import type { Readable } from 'node:stream';
import { authenticate, type AuthenticateResult, type DMARCResult } from 'mailauth';
import { z } from 'zod';
import { engineCommon } from '../engines-common.js';
import { errorResult, type Engine, type EngineDeps, type EngineResult, type ScanContext, type ScanMessage } from '../engine.js';

const dmarcAction = z.enum(['reject', 'quarantine', 'tag', 'ignore']);
type DmarcAction = z.output<typeof dmarcAction>;

export const mailauthOptions = z.strictObject({
  ...engineCommon({ timeout: '10s', maxSize: '25MB', oversize: 'skip' }),
  type: z.literal('mailauth'),
  /** What a DMARC failure does when the sender's domain publishes p=reject. */
  onDmarcReject: dmarcAction.default('reject'),
  /**
   * What a DMARC failure does when the domain publishes p=quarantine: the domain asks for the
   * spam folder, not a refusal, so by default the message is accepted into quarantine.
   */
  onDmarcQuarantine: dmarcAction.default('quarantine'),
});
export type MailauthOptions = z.output<typeof mailauthOptions>;

const LIBRARY_VERSION = `mailauth ${(createRequire(import.meta.url)('mailauth/package.json') as { version: string }).version}`;

type Policy = 'none' | 'quarantine' | 'reject';

/** RFC 7489 §6.6.4: outside the pct sample, reject becomes quarantine and quarantine becomes none. */
export function sampledPolicy(published: Policy, pct: number, draw: number): Policy {
  if (draw * 100 < pct) return published;
  return published === 'reject' ? 'quarantine' : 'none';
}

function policyOf(value: string | undefined): Policy {
  const p = (value ?? '').trim().toLowerCase();
  return p === 'reject' || p === 'quarantine' ? p : 'none';
}

interface DnsFailure { name: string; type: string; code: string }

/** Rcodes that mean "no such record", which SPF, DKIM and DMARC each treat as an answer. */
const NO_RECORD = new Set(['ENOTFOUND', 'ENODATA']);

/**
 * The lookup function mailauth calls: the configured resolver, abandoned when the scan's deadline
 * passes, with every real failure (not "no such record") remembered for the detail.
 */
function lookupVia(resolver: dns.Resolver, signal: AbortSignal, failures: DnsFailure[]) {
  return (name: string, type: string) => new Promise<string[][] | string[]>((resolve, reject) => {
    const abandon = () => reject(Object.assign(new Error(`DNS lookup of ${name} abandoned at the deadline`), { code: 'ECANCELLED' }));
    if (signal.aborted) return abandon();
    signal.addEventListener('abort', abandon, { once: true });
    resolver.resolve(name, type).then((answer) => resolve(answer as string[][] | string[]), (err: NodeJS.ErrnoException) => {
      if (!NO_RECORD.has(err?.code ?? '')) failures.push({ name, type, code: err?.code ?? String(err) });
      reject(err);
    }).finally(() => signal.removeEventListener('abort', abandon));
  });
}

/** The Authentication-Results field out of mailauth's block of header fields, folding kept. */
function authenticationResults(block: string): string | undefined {
  return block.split(/\r\n(?![ \t])/).find((field) => /^Authentication-Results:/i.test(field));
}

function summary(r: AuthenticateResult, dmarcPolicy: Policy | null) {
  const dmarc = r.dmarc as DMARCResult | false;
  return {
    spf: r.spf ? { result: r.spf.status.result, domain: r.spf.domain, comment: r.spf.status.comment } : null,
    dkim: r.dkim.results.map((d) => ({
      result: d.status.result, domain: d.signingDomain, selector: d.selector, aligned: d.status.aligned ?? false, comment: d.status.comment,
    })),
    dmarc: dmarc ? {
      result: dmarc.status.result, domain: dmarc.domain, p: dmarc.p, sp: dmarc.sp, pct: dmarc.pct, policy: dmarc.policy, applied: dmarcPolicy,
    } : null,
    arc: r.arc ? { result: r.arc.status.result, i: r.arc.i, comment: r.arc.status.comment } : null,
  };
}

function temperrors(r: AuthenticateResult): string[] {
  const failed: string[] = [];
  if (r.spf && r.spf.status.result === 'temperror') failed.push('spf');
  if (r.dkim.results.some((d) => d.status.result === 'temperror')) failed.push('dkim');
  if (r.dmarc && r.dmarc.status.result === 'temperror') failed.push('dmarc');
  return failed;
}

export function createMailauth(options: MailauthOptions, deps: EngineDeps): Engine {
  const actionFor: Record<Policy, DmarcAction> = { reject: options.onDmarcReject, quarantine: options.onDmarcQuarantine, none: 'ignore' };

  function judge(r: AuthenticateResult, failures: DnsFailure[]): EngineResult {
    const dmarc = r.dmarc as DMARCResult | false;
    const failedDmarc = dmarc && dmarc.status.result === 'fail';
    const applied = failedDmarc ? sampledPolicy(policyOf(dmarc.policy), dmarc.pct ?? 100, Math.random()) : null;
    const detail: Record<string, unknown> = summary(r, applied);
    const temp = temperrors(r);
    if (temp.length) detail.temperror = temp;
    if (failures.length) detail.dnsFailures = failures;
    const header = authenticationResults(r.headers);
    const headers = header ? [header] : [];
    const action = applied ? actionFor[applied] : 'ignore';
    if (!failedDmarc || action === 'ignore') return { outcome: { status: 'clean' }, headers, detail };
    const from = (dmarc.status.header as { from?: string } | undefined)?.from ?? dmarc.domain;
    return { outcome: { status: 'violation', rule: `dmarc=fail (p=${applied}) header.from=${from}`, action }, headers, detail };
  }

  async function verify(message: ScanMessage, context: ScanContext, resolver: dns.Resolver, signal: AbortSignal): Promise<EngineResult> {
    const failures: DnsFailure[] = [];
    const input: Readable = message.open();
    const read: { error: Error | null } = { error: null };
    input.once('error', (err) => { read.error = err; });
    let onAbort: () => void = () => undefined;
    const deadline = new Promise<EngineResult>((resolve) => {
      onAbort = () => {
        input.destroy(new Error('deadline reached'));
        resolve(errorResult('timeout', 'deadline reached'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
    });
    const verdict = authenticate(input, {
      ip: context.client,
      helo: context.helo,
      sender: context.sender || undefined,
      mta: deps.hostname,
      trustReceived: false,
      disableBimi: true,
      resolver: lookupVia(resolver, signal, failures),
    }).then(
      (r) => judge(r, failures),
      (err: Error) => read.error
        ? errorResult('io', `reading the spool file: ${read.error.message}`)
        : errorResult('protocol', `mailauth: ${err?.message ?? String(err)}`),
    );
    try {
      return await Promise.race([verdict, deadline]);
    } finally {
      signal.removeEventListener('abort', onAbort);
      input.destroy();
    }
  }

  return {
    name: options.name,
    kind: 'auth',
    version: () => LIBRARY_VERSION,
    async scan(message, context, signal) {
      if (context.authUser) return { outcome: { status: 'clean' }, detail: { skipped: 'authenticated' } };
      if (!deps.resolver) return errorResult('refused', 'no DNS servers configured (dns.servers): sender authentication needs DNS');
      if (signal.aborted) return errorResult('timeout', 'deadline reached');
      return verify(message, context, deps.resolver, signal);
    },
    async close() {},
  };
}

export const mailauthDefinition = { type: 'mailauth', kind: 'auth', schema: mailauthOptions, create: createMailauth } as const;
