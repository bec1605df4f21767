/*
 * The DKIM signing keys of a tenant (`tenants.<name>.dkim`), validated key by key, and the one
 * place a key file is read and judged.
 *
 * Each entry is one key: the signing domain (d=), the selector (s=), the PEM file of its private
 * key, the algorithm (rsa-sha256 or ed25519-sha256, RFC 6376 / RFC 8463), and optionally the
 * header fields it signs, those it oversigns (listed once more than present, so a field added on
 * the way breaks the signature), the signature's lifetime (x=) and whether mail From: a subdomain
 * is signed with it. Several entries for one domain are several signatures (key rotation: publish
 * the new selector, sign with both, retire the old one).
 *
 * Takes: the YAML section. Reads: each key file, at validation (check-config, start, reload) and
 *   again when a snapshot's keys are loaded (accept-dkim-keys.ts).
 * Gives: `dkimKeySchema` (errors name the key: an unreadable file, not a private key, a key type
 *   the algorithm does not take, an RSA key under 1024 bits), `readSigningKey`, and
 *   `dkimWarnings` (RSA keys under 2048 bits, RFC 8301 section 3.2).
 * RFCs: 6376 (DKIM), 8301 (key sizes), 8463 (Ed25519).
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { duration } from '../../base/base-config.js';

/** What a DKIM signature covers when `headers` is not given (RFC 6376 section 5.4.1's list, less trace fields). */
export const DEFAULT_SIGNED_HEADERS = [
  'From', 'Reply-To', 'Subject', 'Date', 'To', 'Cc', 'Message-ID', 'In-Reply-To', 'References', 'MIME-Version',
  'Content-Type', 'Content-Transfer-Encoding', 'List-Id', 'List-Unsubscribe', 'List-Unsubscribe-Post', 'Sender',
];

/** Fields oversigned when `oversign` is not given: those a replayer would most like to add. */
export const DEFAULT_OVERSIGNED_HEADERS = ['From', 'Reply-To', 'Subject', 'Date', 'To', 'Cc', 'Message-ID', 'List-Unsubscribe'];

// A signature never covers another: each is made over the message without the others (RFC 6376 5.4).
const fieldName = z.string().regex(/^[\x21-\x39\x3b-\x7e]+$/, 'a header field name such as "Subject"')
  .refine((f) => f.toLowerCase() !== 'dkim-signature', 'not DKIM-Signature: each signature is made without the others');

const label = '[a-z0-9]([a-z0-9-]*[a-z0-9])?';

export const dkimKeySchema = z.strictObject({
  /** The signing domain (d=): mail whose From: address is at this domain is signed with this key. */
  domain: z.string().transform((d) => d.toLowerCase().replace(/\.$/, ''))
    .pipe(z.string().regex(new RegExp(`^${label}(\\.${label})+$`), 'a domain name such as "example.com"')),
  /** The selector (s=): the public key is the TXT record <selector>._domainkey.<domain>. */
  selector: z.string().regex(new RegExp(`^${label}(\\.${label})*$`, 'i'), 'a selector such as "s2026" (letters, digits, "-", dots)'),
  /** The PEM file of the private key (PKCS#8 or PKCS#1), readable by Ichidan. */
  key: z.string().min(1, 'the path of a PEM private key file'),
  algorithm: z.enum(['rsa-sha256', 'ed25519-sha256']).default('rsa-sha256'),
  /** Also sign mail From: any subdomain of `domain` with this key (OpenDKIM's SubDomains). */
  subdomains: z.boolean().default(false),
  /** The header fields signed, when present (From is required, RFC 6376 section 5.4). */
  headers: z.array(fieldName).min(1).refine((h) => h.some((f) => f.toLowerCase() === 'from'), 'must include "From" (RFC 6376 section 5.4)')
    .default(DEFAULT_SIGNED_HEADERS),
  /** Fields listed once more than present, so one added after signing breaks the signature ([] for none). */
  oversign: z.array(fieldName).default(DEFAULT_OVERSIGNED_HEADERS),
  /** The signature's lifetime (x= is the signing time plus this); none when not given. */
  expire: duration.refine((ms) => ms >= 1000, 'at least "1s"').optional(),
}).superRefine((entry, ctx) => {
  const loaded = readSigningKey(entry.key, entry.algorithm);
  if ('problem' in loaded) ctx.addIssue({ code: 'custom', path: ['key'], message: loaded.problem });
});

export type DkimKeyConfig = z.output<typeof dkimKeySchema>;

export const tenantDkimSchema = z.array(dkimKeySchema).default([]);

export type SigningKey = { key: KeyObject; bits: number | null };

/** Reads and judges one key file against its algorithm: the key, or the problem in words. */
export function readSigningKey(path: string, algorithm: DkimKeyConfig['algorithm']): SigningKey | { problem: string } {
  let pem: Buffer;
  try {
    pem = readFileSync(path);
  } catch (err) {
    return { problem: `cannot read the key file ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` };
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch {
    return { problem: `${path} holds no PEM private key` };
  }
  const type = key.asymmetricKeyType;
  const wanted = algorithm === 'rsa-sha256' ? 'rsa' : 'ed25519';
  if (type !== wanted) return { problem: `${path} holds ${type === undefined ? 'an unknown' : `an ${type.toUpperCase()}`} key, but algorithm ${algorithm} needs an ${wanted.toUpperCase()} key` };
  const bits = type === 'rsa' ? key.asymmetricKeyDetails?.modulusLength ?? null : null;
  // RFC 8301 section 3.2: verifiers must not accept keys under 1024 bits.
  if (bits !== null && bits < 1024) return { problem: `${path} holds an RSA key of ${bits} bits: at least 1024 (2048 recommended, RFC 8301)` };
  return { key, bits };
}

/** RSA keys that sign but are weaker than RFC 8301 asks signers to use, per key path. */
export function dkimWarnings(tenants: Record<string, { dkim: readonly DkimKeyConfig[] }>): string[] {
  const out: string[] = [];
  for (const [tenant, t] of Object.entries(tenants)) {
    t.dkim.forEach((entry, i) => {
      const loaded = readSigningKey(entry.key, entry.algorithm);
      if ('bits' in loaded && loaded.bits !== null && loaded.bits < 2048) {
        out.push(`tenants.${tenant}.dkim[${i}].key: an RSA key of ${loaded.bits} bits; use 2048 (RFC 8301 section 3.2)`);
      }
    });
  }
  return out;
}

/**
 * The DNS TXT record that publishes a key's public half at <selector>._domainkey.<domain>:
 * RSA as SubjectPublicKeyInfo DER (what opendkim-genkey publishes), Ed25519 as the raw 32-byte
 * key (RFC 8463 section 4.2).
 */
export function dkimTxtRecord(key: KeyObject, algorithm: DkimKeyConfig['algorithm']): string {
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  if (algorithm === 'ed25519-sha256') return `v=DKIM1; k=ed25519; p=${spki.subarray(-32).toString('base64')}`;
  return `v=DKIM1; k=rsa; p=${spki.toString('base64')}`;
}
