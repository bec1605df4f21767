/*
 * What a drained node tells the peer it hands a message to, and how the peer knows a peer said it.
 *
 * A transfer is an ordinary SMTP transaction to the peer's MX listener (delivery's client, as any
 * delivery) with two ESMTP parameters that only a cluster member can make:
 *   MAIL FROM:<s> XICHIDAN-XFER=<payload>.<mac>   the original queue id, the draining node, the
 *                                                 time, the sender, RET, ENVID, SMTPUTF8;
 *   RCPT TO:<r> XICHIDAN-RCPT=<payload>.<mac>     that recipient's tenant, NOTIFY and ORCPT.
 * Each payload is base64url JSON (xtext-safe, no "=") and each mac an HMAC-SHA256 under
 * `cluster.secret`: a RCPT's over the queue id, the address and its payload, so a recipient's
 * tenant cannot be moved to another address or message; the MAIL's over its payload, which binds
 * the sender. A MAIL parameter older than TRANSFER_MAX_AGE_MS (or from the future by as much) is
 * refused, so a transaction seen once cannot be replayed later.
 *
 * Why parameters and not a trace header: the tenant decides the recipient's fate at RCPT time
 * (relay permission, the tenant's lane), before any header arrives; smtp-server hands unknown
 * MAIL and RCPT parameters to the handlers (xtext-decoded) and the listener refuses them from
 * anyone else with 555 5.5.4, so nothing of them is ever stored on a refusal, nor needs
 * stripping from the message. The receiver takes NOTIFY, ORCPT, RET and ENVID from the signed
 * payloads (exactly as stored on the draining node), not from the wire.
 *
 * Who is a peer: `cluster.secret` set on both sides, the macs right, and, when `cluster.peers`
 * is given, the connection from one of those networks. Mail transferred this way is not scanned
 * again: it was where it was first accepted.
 * Settings: cluster.secret, cluster.peers.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const XFER_PARAM = 'XICHIDAN-XFER';
export const RCPT_PARAM = 'XICHIDAN-RCPT';
export const TRANSFER_MAX_AGE_MS = 600_000;

export interface TransferMessage {
  /** The queue id on the draining node, kept by the peer. */
  id: string;
  /** The draining node's name. */
  from: string;
  at: number;
  sender: string;
  ret: string | null;
  envid: string | null;
  /** The message was accepted with SMTPUTF8 (its headers may be UTF-8 whatever its addresses are). */
  smtputf8: boolean;
}

export interface TransferRecipient {
  tenant: string;
  notify: string | null;
  orcpt: string | null;
}

const QUEUE_ID = /^[0-9A-Za-z]{1,64}$/;

function mac(secret: string, text: string): string {
  return createHmac('sha256', secret).update(text).digest('base64url');
}

function seal(secret: string, value: unknown, bound: string): string {
  const payload = Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${payload}.${mac(secret, bound + payload)}`;
}

function open(secret: string, param: unknown, bound: string): unknown {
  if (typeof param !== 'string') return null;
  const [payload, given, extra] = param.split('.');
  if (!payload || !given || extra !== undefined) return null;
  const want = Buffer.from(mac(secret, bound + payload));
  const got = Buffer.from(given);
  if (want.length !== got.length || !timingSafeEqual(want, got)) return null;
  try {
    return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    return null;
  }
}

const str = (v: unknown): v is string => typeof v === 'string';
const strOrNull = (v: unknown): v is string | null => v === null || typeof v === 'string';

/** The MAIL FROM parameter of a transfer. */
export function transferParameter(secret: string, m: TransferMessage): string {
  return `${XFER_PARAM}=${seal(secret, m, 'mail\n')}`;
}

/** The RCPT TO parameter of one recipient of a transfer. */
export function recipientParameter(secret: string, id: string, address: string, r: TransferRecipient): string {
  return `${RCPT_PARAM}=${seal(secret, r, `rcpt\n${id}\n${address}\n`)}`;
}

/** The transfer a MAIL FROM parameter vouches for, or null when it is forged, stale or malformed. */
export function readTransfer(secret: string, param: unknown, sender: string, now: number): TransferMessage | null {
  const m = open(secret, param, 'mail\n') as Partial<TransferMessage> | null;
  if (!m || !str(m.id) || !QUEUE_ID.test(m.id) || !str(m.from) || typeof m.at !== 'number' || !str(m.sender) || !strOrNull(m.ret) || !strOrNull(m.envid) || typeof m.smtputf8 !== 'boolean') return null;
  if (Math.abs(now - m.at) > TRANSFER_MAX_AGE_MS || m.sender !== sender) return null;
  return m as TransferMessage;
}

/** What a RCPT TO parameter says of this recipient of this transfer, or null when it does not hold. */
export function readRecipient(secret: string, param: unknown, id: string, address: string): TransferRecipient | null {
  const r = open(secret, param, `rcpt\n${id}\n${address}\n`) as Partial<TransferRecipient> | null;
  if (!r || !str(r.tenant) || r.tenant === '' || !strOrNull(r.notify) || !strOrNull(r.orcpt)) return null;
  return r as TransferRecipient;
}
