/*
 * rspamd — reached over HTTP on its normal worker with `POST /checkv2`.
 *
 * Takes: the spool file, streamed as the request body (never held in memory or copied), and the
 *   SMTP transaction (client IP and name, HELO, sender, recipients, SASL user, queue id) as
 *   rspamd's request headers, always: without them rspamd cannot run its envelope checks and
 *   waits on its own reverse lookups.
 * Gives: spam when rspamd's action is `reject` or its score reaches the threshold, else clean;
 *   both with { score, threshold, symbols, action } in rspamd's units. rspamd's own action is
 *   kept as its opinion: the final verdict is the aggregation's. Errors: refused (nothing
 *   listening), too-large (HTTP 413, as a proxy in front of rspamd answers), protocol (any other
 *   non-200, a reply that is not HTTP or not the expected JSON), io (the connection broke),
 *   timeout. rspamd 3.4 itself meets a message over its `max_message` by closing the connection
 *   without a reply (it logs "Request entity too large"), which can only read as io: keep
 *   maxSize at or below max_message.
 * Network: one HTTP/1.1 connection per scan to `url` (rspamd answers `Connection: close`).
 * Protocol: rspamd's HTTP protocol (see rspamd-protocol.ts); `GET /ping` answers `pong`.
 * Settings: engines[].url (default http://127.0.0.1:11333, the normal worker; a path prefix is
 *   kept, for an rspamd behind a reverse proxy), threshold (the score that counts as spam and
 *   normalises the weighted mean; by default the reply's required_score, which is rspamd's reject
 *   score), timeout (20s), maxSize (50MB: rspamd's own max_message default).
 * Version: the `Server` header of rspamd's last reply (`rspamd/3.4`).
 */
import { request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders, type ClientRequest } from 'node:http';
import type { Readable } from 'node:stream';
import { z } from 'zod';
import { engineCommon } from '../engines-common.js';
import { errorResult, socketErrorResult, type Engine, type EngineDeps, type EngineResult, type SpamScore } from '../engine.js';
import { errorText, isKnownAction, parseCheckReply, requestHeaders } from './rspamd-protocol.js';

export const rspamdOptions = z.strictObject({
  ...engineCommon({ timeout: '20s', maxSize: '50MB', oversize: 'skip' }),
  type: z.literal('rspamd'),
  /** The normal worker (not the controller): scheme, host, port and an optional path prefix. */
  url: z.string().refine((s) => URL.canParse(s) && new URL(s).protocol === 'http:', 'an http:// URL such as "http://127.0.0.1:11333"')
    .default('http://127.0.0.1:11333'),
  /** Score from which a message counts as spam here; by default rspamd's required (reject) score. */
  threshold: z.number().positive().optional(),
});
export type RspamdOptions = z.output<typeof rspamdOptions>;

/** A checkv2 reply lists symbols, URLs and addresses: large for big messages, never this large. */
const MAX_REPLY = 8 * 1024 * 1024;

interface HttpReply {
  status: number;
  server: string | null;
  body: string;
}

/** The reply was not HTTP (or not whole HTTP): a protocol error rather than a broken connection. */
class NotHttp extends Error {}

function drained(req: ClientRequest): Promise<void> {
  return new Promise((resolve) => {
    const done = () => { req.off('drain', done); req.off('close', done); resolve(); };
    req.on('drain', done);
    req.on('close', done);
  });
}

/**
 * Streams the body with backpressure and ends the request. Stops when the request is gone (an
 * abort) or answered early (a 413 before the whole body went out: the body stream is destroyed
 * then, which is no failure); a read error of the spool file fails the request.
 */
async function sendBody(req: ClientRequest, body: Readable, answered: () => boolean): Promise<void> {
  try {
    for await (const chunk of body) {
      if (req.destroyed) return;
      if (!req.write(chunk)) await drained(req);
    }
    if (!req.destroyed) req.end();
  } catch (err) {
    if (answered()) return;
    req.destroy(new Error(`reading the message: ${(err as Error).message}`, { cause: err }));
  }
}

function readBody(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let length = 0;
    res.on('data', (chunk: Buffer) => {
      length += chunk.length;
      if (length > MAX_REPLY) return res.destroy(new NotHttp(`reply longer than ${MAX_REPLY} bytes`));
      parts.push(chunk);
    });
    res.once('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    res.on('error', reject);
    res.once('close', () => {
      if (!res.complete) reject(Object.assign(new Error('connection closed before the reply ended'), { code: 'ECONNRESET' }));
    });
  });
}

/** One HTTP exchange on its own connection; the connection is destroyed when done or on abort. */
function exchange(url: URL, method: 'GET' | 'POST', headers: OutgoingHttpHeaders, openBody: (() => Readable) | null,
  signal: AbortSignal): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    let body: Readable | null = null;
    let answered = false;
    const req = httpRequest(url, { method, headers, agent: false, signal });
    req.setNoDelay(true);
    const fail = (err: NodeJS.ErrnoException) => {
      body?.destroy();
      req.destroy();
      reject(typeof err.code === 'string' && err.code.startsWith('HPE_') ? new NotHttp(`not an HTTP reply (${err.code})`, { cause: err }) : err);
    };
    req.on('error', fail);
    req.once('response', (res) => {
      // An early answer (413 before the whole body went out) ends the upload.
      answered = true;
      body?.destroy();
      readBody(res).then((text) => {
        req.destroy();
        const server = res.headers.server;
        resolve({ status: res.statusCode ?? 0, server: typeof server === 'string' ? server : null, body: text });
      }, fail);
    });
    if (openBody) {
      body = openBody();
      void sendBody(req, body, () => answered);
    } else {
      req.end();
    }
  });
}

export function createRspamd(options: RspamdOptions, deps: EngineDeps): Engine {
  const base = new URL(options.url);
  const prefix = base.pathname.replace(/\/+$/, '');
  const checkUrl = new URL(`${prefix}/checkv2`, base);
  const pingUrl = new URL(`${prefix}/ping`, base);
  const server = base.host;
  let version: string | null = null;

  function interpret(reply: HttpReply): EngineResult {
    const detail: Record<string, unknown> = { server };
    if (reply.status === 413) return errorResult('too-large', `rspamd: HTTP 413 ${errorText(reply.body)}`, detail);
    if (reply.status !== 200) return errorResult('protocol', `rspamd: HTTP ${reply.status} ${errorText(reply.body)}`, detail);
    const parsed = parseCheckReply(reply.body);
    if (!parsed.ok) return errorResult('protocol', `rspamd: ${parsed.reason}`, detail);
    const r = parsed.reply;
    const threshold = options.threshold ?? r.requiredScore;
    if (threshold === null) return errorResult('protocol', 'rspamd: reply has no required_score and no threshold is configured', detail);
    const score: SpamScore = { score: r.score, threshold, symbols: r.symbols };
    if (isKnownAction(r.action)) score.action = r.action;
    else detail.action = r.action;
    if (r.smtpMessage) detail.smtpMessage = r.smtpMessage;
    const spam = r.action === 'reject' || r.score >= threshold;
    return { outcome: spam ? { status: 'spam', score } : { status: 'clean', score }, detail };
  }

  return {
    name: options.name,
    kind: 'spam',
    version: () => version,
    async scan(message, context, signal) {
      try {
        const reply = await exchange(checkUrl, 'POST', requestHeaders(context, message.size), () => message.open(), signal);
        version = reply.server ?? version;
        return interpret(reply);
      } catch (err) {
        if (err instanceof NotHttp && !signal.aborted) return errorResult('protocol', `rspamd: ${err.message}`, { server });
        const result = socketErrorResult(err, signal);
        if (!signal.aborted) deps.log.debug({ engine: options.name, err: (err as Error).message }, 'rspamd request failed');
        return { ...result, detail: { server } };
      }
    },
    async ping(signal) {
      try {
        const reply = await exchange(pingUrl, 'GET', {}, null, signal);
        version = reply.server ?? version;
        return reply.status === 200 && reply.body.trim() === 'pong';
      } catch {
        return false;
      }
    },
    async close() {},
  };
}

export const rspamdDefinition = { type: 'rspamd', kind: 'spam', schema: rspamdOptions, create: createRspamd } as const;
