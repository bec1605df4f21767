/*
 * rspamd's HTTP protocol, the parts Ichidan uses: the request headers that carry the SMTP
 * transaction to `POST /checkv2`, and the JSON reply.
 *
 * Takes: the transaction's context and the message size; the reply body.
 * Gives: the request headers; the reply as data (score, required score, action, symbol names,
 *   rspamd's SMTP message) or the reason it could not be read.
 * Protocol: rspamd "protocol" documentation. Request headers: `IP` (the client; without it
 *   rspamd sees no client at all), `Helo`, `From` (`<>` for the null sender: an empty value
 *   would make rspamd fall back to the From: header), one `Rcpt` per recipient, `User` (the SASL
 *   login), `Queue-Id`, `Hostname` (the client's verified name; `unknown` when a lookup failed,
 *   which also spares rspamd its own PTR lookup — measured ~205 ms when it has to time out), and
 *   `Content-Length`. Reply: `{ action, score, required_score, symbols: { NAME: {…} }, messages:
 *   { smtp_message }, is_skipped, … }` where required_score is the reject score.
 */
import type { OutgoingHttpHeaders } from 'node:http';
import { z } from 'zod';
import type { ScanContext, SpamScore } from '../engine.js';

/**
 * Header values travel as bytes: non-ASCII (SMTPUTF8 addresses) goes out as its UTF-8 bytes,
 * which is what rspamd reads; control characters never reach the wire.
 */
export function headerValue(value: string): string {
  return Buffer.from(value.replace(/[\x00-\x1f\x7f]/g, ''), 'utf8').toString('latin1');
}

export function requestHeaders(context: ScanContext, size: number): OutgoingHttpHeaders {
  const headers: OutgoingHttpHeaders = {
    'Content-Length': String(size),
    IP: headerValue(context.client),
    Helo: headerValue(context.helo),
    From: context.sender === '' ? '<>' : headerValue(context.sender),
    Rcpt: context.recipients.map(headerValue),
    'Queue-Id': headerValue(context.queueId),
  };
  if (context.authUser) headers.User = headerValue(context.authUser);
  if (context.clientName) headers.Hostname = headerValue(context.clientName);
  else if (context.clientName === null) headers.Hostname = 'unknown';
  return headers;
}

type Action = NonNullable<SpamScore['action']>;
const ACTIONS: ReadonlySet<string> = new Set<Action>(['no action', 'greylist', 'add header', 'rewrite subject', 'soft reject', 'reject']);

export function isKnownAction(action: string): action is Action {
  return ACTIONS.has(action);
}

const checkReply = z.object({
  action: z.string(),
  score: z.number(),
  required_score: z.number().optional(),
  symbols: z.record(z.string(), z.unknown()).optional(),
  messages: z.object({ smtp_message: z.string().optional() }).optional(),
});

export interface CheckReply {
  /** As rspamd names it; custom actions (`discard`, `quarantine`) included. */
  action: string;
  score: number;
  requiredScore: number | null;
  symbols: string[];
  smtpMessage: string | null;
}

export function parseCheckReply(body: string): { ok: true; reply: CheckReply } | { ok: false; reason: string } {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    return { ok: false, reason: `reply is not JSON: ${JSON.stringify(body.slice(0, 80))}` };
  }
  const parsed = checkReply.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return { ok: false, reason: `reply lacks a usable "${issue.path.join('.')}": ${issue.message}` };
  }
  const r = parsed.data;
  return {
    ok: true,
    reply: {
      action: r.action,
      score: r.score,
      requiredScore: r.required_score ?? null,
      symbols: Object.keys(r.symbols ?? {}),
      smtpMessage: r.messages?.smtp_message ?? null,
    },
  };
}

/** rspamd's error replies carry `{"error": "…"}`; anything else is shown as it came. */
export function errorText(body: string): string {
  try {
    const json = JSON.parse(body) as { error?: unknown };
    if (typeof json?.error === 'string') return json.error;
  } catch {
    // not JSON: fall through to the raw text
  }
  return body.slice(0, 120).trim();
}
