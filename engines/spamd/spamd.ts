/*
 * spamd — SpamAssassin's daemon, reached over TCP or a unix socket with SPAMC/1.5.
 *
 * Takes: the spool file, streamed to spamd behind a `Content-length` head (nothing is buffered
 *   in memory or copied), and the configured per-user name.
 * Gives: spam (`Spam: True`) or clean, both with the score in spamd's own units
 *   { score, threshold: spamd's required score, symbols: the rule names that hit } — or an error:
 *   refused (no server answered), too-large (EX_TOOBIG), protocol (any other EX_ code, or a reply
 *   that is not SPAMD), io (the connection broke), timeout.
 * Network: the configured spamd servers, tried in order. A server that cannot take the scan at
 *   all — nothing listening, or the connection breaking (io) — is skipped for the next one within
 *   the one deadline: spamd keeps no state between requests, so a scan can be sent again
 *   elsewhere. A server that answers, even with a refusal, is believed. The last server that
 *   answered is tried first next time.
 * Protocol: SPAMC/1.5 (see spamd-protocol.ts).
 * Settings: engines[].servers (list of {host, port} or {socket}), user, command (SYMBOLS lists the
 *   rules that hit, CHECK only scores), timeout (30s), maxSize (512KB: spamc's own default —
 *   spamd is slow on big messages and spam is small).
 * Version: the SpamAssassin release from a HEADERS probe of a tiny message (asked on first use and
 *   every hour), followed by the protocol version of spamd's last reply line:
 *   `SpamAssassin 4.0.1 (2024-03-25); SPAMD/1.1`.
 */
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { z } from 'zod';
import { daemonAddress, describeAddress, engineCommon, openSocket, type DaemonAddress } from '../engines-common.js';
import { errorResult, socketErrorResult, type Engine, type EngineDeps, type EngineResult, type ScanMessage } from '../engine.js';
import {
  EX_TOOBIG, PING_REQUEST, checkerVersion, exitName, parseReply, parseSpamHeader, parseStatusLine, parseSymbols,
  requestHead, type SpamdCommand,
} from './spamd-protocol.js';

export const spamdOptions = z.strictObject({
  ...engineCommon({ timeout: '30s', maxSize: '512KB', oversize: 'skip' }),
  type: z.literal('spamd'),
  /** spamd servers, tried in order (failover); TCP `{host, port}` or `{socket: path}`. */
  servers: z.array(daemonAddress(783)).min(1).default([{ host: '127.0.0.1', port: 783 }] as never),
  /** Sent as `User:` so spamd applies that user's preferences (spamd's `-u`/virtual users). */
  user: z.string().regex(/^[^\x00-\x1f\x7f]{1,128}$/, 'a user name without control characters').optional(),
  /** SYMBOLS also returns the names of the rules that hit; CHECK returns the score only. */
  command: z.enum(['SYMBOLS', 'CHECK']).default('SYMBOLS'),
});
export type SpamdOptions = z.output<typeof spamdOptions>;

const VERSION_TTL_MS = 3_600_000;
/** A SYMBOLS list is a few hundred bytes; this only stops a runaway peer. */
const MAX_REPLY = 256 * 1024;
const VERSION_PROBE = Buffer.from('Subject: version probe\r\n\r\n.\r\n');

/** spamd's reply passed any sane length: a protocol error, not a reason to try another server. */
class ReplyTooLong extends Error {}

/** Everything spamd sends until it closes the connection (it always does after one reply). */
function readToClose(socket: Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let length = 0;
    let ended = false;
    let failure: Error | undefined;
    socket.on('data', (chunk: Buffer) => {
      length += chunk.length;
      if (length > MAX_REPLY) {
        reject(new ReplyTooLong(`spamd reply longer than ${MAX_REPLY} bytes`));
        return void socket.destroy();
      }
      parts.push(chunk);
    });
    socket.once('end', () => { ended = true; resolve(Buffer.concat(parts)); });
    // A write error (spamd refused the request and closed while the body was still going out)
    // is not the end: the refusal may still be in flight, and 'close' settles it either way.
    socket.on('error', (err) => { failure ??= err; });
    socket.once('close', () => {
      if (ended) return;
      reject(Object.assign(new Error(`connection closed before the reply ended${failure ? `: ${failure.message}` : ''}`, { cause: failure }),
        { code: (failure as NodeJS.ErrnoException | undefined)?.code ?? 'ECONNRESET' }));
    });
  });
}

function drained(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => { socket.off('drain', done); socket.off('close', done); resolve(); };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

/**
 * Streams the body with backpressure. No half-close after it: spamd reads exactly
 * Content-length bytes, and a peer that is not half-open aware would take the FIN for the end of
 * the conversation. Stops quietly when spamd has already closed (its reply decides); a read
 * error of the spool file breaks the connection with it.
 */
async function sendBody(socket: Socket, body: Readable): Promise<void> {
  try {
    for await (const chunk of body) {
      if (socket.destroyed) return;
      if (!socket.write(chunk)) await drained(socket);
    }
  } catch (err) {
    // Without the file's own code: an ENOENT here must not read as "nothing listening".
    socket.destroy(new Error(`reading the message: ${(err as Error).message}`, { cause: err }));
  }
}

/**
 * One request on a fresh connection: the head, then the body; resolves with the whole reply.
 * The socket is destroyed when done or on abort.
 */
async function request(address: DaemonAddress, head: string, openBody: (() => Readable) | null, signal: AbortSignal): Promise<Buffer> {
  const socket = await openSocket(address, signal);
  // Opened only once connected, so that a refused connection leaves no file stream behind.
  const body = openBody?.() ?? null;
  const onAbort = () => socket.destroy();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    const reply = readToClose(socket);
    socket.write(head);
    if (body) void sendBody(socket, body);
    return await reply;
  } finally {
    signal.removeEventListener('abort', onAbort);
    body?.destroy();
    socket.destroy();
  }
}

export function createSpamd(options: SpamdOptions, deps: EngineDeps): Engine {
  const servers = options.servers as DaemonAddress[];
  const command: SpamdCommand = options.command;
  let preferred = 0;
  let protocol: string | null = null;
  let release: string | null = null;
  let releaseAt = 0;
  const closing = new AbortController();

  async function refreshRelease(address: DaemonAddress, signal: AbortSignal): Promise<void> {
    if (Date.now() - releaseAt < VERSION_TTL_MS || closing.signal.aborted) return;
    releaseAt = Date.now();
    try {
      const bytes = await request(address, requestHead('HEADERS', VERSION_PROBE.length, options.user),
        () => Readable.from([VERSION_PROBE]), AbortSignal.any([closing.signal, signal]));
      const reply = parseReply(bytes);
      if (reply.kind === 'ok') release = checkerVersion(reply.body) ?? release;
    } catch (err) {
      deps.log.debug({ engine: options.name, err: (err as Error).message }, 'spamd version probe failed');
    }
  }

  function interpret(bytes: Buffer, server: string): EngineResult {
    const reply = parseReply(bytes);
    const detail = { server };
    if (reply.kind === 'garbled') return errorResult('protocol', `spamd: ${reply.reason}`, detail);
    protocol = reply.protocol;
    if (reply.kind === 'refused') {
      const what = `spamd: ${exitName(reply.code)} (${reply.code}) ${reply.text}`;
      return errorResult(reply.code === EX_TOOBIG ? 'too-large' : 'protocol', what, detail);
    }
    const spamHeader = reply.headers.get('spam');
    const verdict = spamHeader === undefined ? null : parseSpamHeader(spamHeader);
    if (!verdict) return errorResult('protocol', `spamd: no usable Spam header (${JSON.stringify(spamHeader ?? null)})`, detail);
    const score = { score: verdict.score, threshold: verdict.threshold, symbols: command === 'SYMBOLS' ? parseSymbols(reply.body) : [] };
    return { outcome: verdict.spam ? { status: 'spam', score } : { status: 'clean', score }, detail };
  }

  return {
    name: options.name,
    kind: 'spam',
    version: () => (protocol === null ? release : release === null ? protocol : `${release}; ${protocol}`),
    async scan(message: ScanMessage, _context, signal) {
      let last: EngineResult = errorResult('refused', 'no spamd server configured');
      for (let i = 0; i < servers.length; i++) {
        const index = (preferred + i) % servers.length;
        const address = servers[index];
        try {
          const bytes = await request(address, requestHead(command, message.size, options.user), () => message.open(), signal);
          preferred = index;
          const result = interpret(bytes, describeAddress(address));
          if (result.outcome.status !== 'error') void refreshRelease(address, AbortSignal.timeout(options.timeout));
          return result;
        } catch (err) {
          if (err instanceof ReplyTooLong && !signal.aborted) return errorResult('protocol', err.message, { server: describeAddress(address) });
          last = socketErrorResult(err, signal);
          if (signal.aborted) return last;
          deps.log.warn({ engine: options.name, server: describeAddress(address), err: (err as Error).message },
            'spamd server unavailable, trying the next');
        }
      }
      return last;
    },
    async ping(signal) {
      for (const address of servers) {
        try {
          const bytes = await request(address, PING_REQUEST, null, signal);
          const status = parseStatusLine(bytes.toString('latin1').split(/\r?\n/)[0]);
          if (status?.code === 0 && status.text === 'PONG') {
            protocol ??= status.protocol;
            await refreshRelease(address, signal);
            return true;
          }
        } catch {
          if (signal.aborted) return false;
        }
      }
      return false;
    },
    async close() {
      closing.abort();
    },
  };
}

export const spamdDefinition = { type: 'spamd', kind: 'spam', schema: spamdOptions, create: createSpamd } as const;
