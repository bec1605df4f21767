/*
 * ICAP — an anti-virus service reached with RESPMOD (RFC 3507), which is how most commercial AV
 * engines (and c-icap in front of clamd) are offered.
 *
 * Takes: the spool file, presented as the body of a synthetic HTTP exchange (a GET of
 *   http://<this host>/queue/<queue id>.eml answered `200 OK`, `Content-Type: message/rfc822`)
 *   and streamed in chunks straight from the file: first the preview the server asked for, the
 *   rest only if it answers `100 Continue`.
 * Gives: clean (`204`, or a `200` whose encapsulated body is the message unchanged), infected
 *   (a threat name from `X-Infection-Found`, `X-Violations-Found`, `X-Virus-ID` or the block page;
 *   'unknown' for an encapsulated `403` or a changed body that names nothing), unscannable (the
 *   name is ClamAV's Heuristics.Limits.Exceeded.*: the server could not scan the content whole),
 *   or an error:
 *   refused (nothing listening, or ICAP `503`: the server is up but takes no work), too-large
 *   (ICAP `413`, or a `5xx` whose reason speaks of size or limits), protocol (any other ICAP
 *   `4xx`/`5xx`, a service without RESPMOD, a malformed reply), io (the connection broke),
 *   timeout. `detail` has the server, its ISTag and the ICAP (and encapsulated HTTP) status.
 * Network: the configured ICAP servers, one TCP connection per request (`Connection: close`),
 *   never more at once per server than its `Max-Connections`. Servers are tried in order, the last
 *   one that answered first: on refused or io the scan moves to the next, within the one deadline
 *   (the message is read again from the spool, so a retry costs nothing but time). Timeouts,
 *   protocol errors and size refusals are not retried: another server of the same service would
 *   answer the same.
 * OPTIONS: asked on first use and whenever its answer expires (`optionsTtl`, else the server's
 *   `Options-TTL`, else an hour), or earlier when a reply carries a different ISTag; concurrent
 *   scans share one request. `version()` is the ISTag last seen.
 * Settings: engines[].server or engines[].servers ({host, port}), service, optionsTtl, timeout,
 *   maxSize.
 */
import { createHash } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { z } from 'zod';
import { duration, port } from '../../base/base-config.js';
import { engineCommon } from '../engines-common.js';
import { avFinding, errorResult, socketErrorResult, type Engine, type EngineDeps, type EngineResult, type ScanContext, type ScanMessage } from '../engine.js';
import {
  IcapClosedError, IcapProtocolError, IEOF_CHUNK, LAST_CHUNK, optionsRequest, parseOptions, readerFor, readReply,
  respmodHead, sendChunks, serviceUri, threatFromHeaders, threatFromPage, unquote, write,
  type ByteReader, type IcapReply, type IcapTarget, type ServiceOptions,
} from './icap-protocol.js';

const icapServer = z.strictObject({ host: z.string().min(1).default('127.0.0.1'), port: port.default(1344) });

export const icapOptions = z.strictObject({
  ...engineCommon({ timeout: '30s', maxSize: '25MB', oversize: 'unscannable' }),
  type: z.literal('icap'),
  /** The ICAP server; give an address: a name would be looked up with the system resolver. */
  server: icapServer.optional(),
  /** Or several, tried in order (failover on refused and broken connections). */
  servers: z.array(icapServer).min(1).optional(),
  /** The service path on the server: `avscan` for icap://host:1344/avscan. */
  service: z.string().regex(/^\/?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]+$/, 'an ICAP service path such as "avscan"')
    .transform((s) => s.replace(/^\//, '')),
  /** How long an OPTIONS answer is trusted (default: the server's Options-TTL, else 1h). */
  optionsTtl: duration.optional(),
}).refine((o) => (o.server === undefined) !== (o.servers === undefined), { message: 'give either "server" or "servers"', path: ['servers'] });
export type IcapOptions = z.output<typeof icapOptions>;

const DEFAULT_OPTIONS_TTL_MS = 3_600_000;

/** An ICAP status that is not an answer about the message. */
class IcapStatusError extends Error {
  constructor(readonly status: number, readonly reason: string, what: string) {
    super(`${what}: ICAP ${status} ${reason}`.trim());
  }
}

/** Per server: its OPTIONS answer and the connections in use against its Max-Connections. */
interface ServerState {
  target: IcapTarget;
  label: string;
  options: ServiceOptions | null;
  expires: number;
  pending: Promise<ServiceOptions> | null;
  active: number;
  waiting: Array<() => void>;
}

function connectTo(target: IcapTarget, signal: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: target.host, port: target.port });
    const onAbort = () => { socket.destroy(); reject(signal.reason); };
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      signal.removeEventListener('abort', onAbort);
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', (err) => {
      signal.removeEventListener('abort', onAbort);
      reject(err);
    });
  });
}

/** Resolves with `promise`, or rejects as soon as `signal` aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/**
 * Sends while the reply is read, since a server may answer (and close) before it has everything.
 * A send cut short by the server closing is not an error in itself: the reply, or its absence,
 * tells. `sent` settles when sending has stopped either way.
 */
function sendWhileReading(socket: Socket, reader: ByteReader, send: () => Promise<void>): { reply: Promise<IcapReply>; sent: Promise<void> } {
  const reply = readReply(reader);
  const sent = send().catch((err: unknown) => {
    if (!(err instanceof IcapClosedError)) socket.destroy(err as Error);
  });
  return { reply, sent };
}

async function sameAsMessage(reply: IcapReply, message: ScanMessage, signal: AbortSignal): Promise<boolean> {
  const body = reply.body;
  if (body === null) return message.size === 0;
  if (body.length !== message.size) return false;
  const hash = createHash('sha256');
  for await (const piece of message.open()) {
    if (signal.aborted) throw signal.reason;
    hash.update(piece as Buffer);
  }
  return hash.digest('hex') === body.sha256;
}

/** What an ICAP status other than 100, 200 and 204 means for the scan. */
function statusResult(err: IcapStatusError, detail: Record<string, unknown>): EngineResult {
  const { status, reason } = err;
  if (status === 413) return errorResult('too-large', err.message, detail);
  if (status === 503) return errorResult('refused', err.message, detail);
  if (status >= 500 && /size|too (?:large|big)|limit/i.test(reason)) return errorResult('too-large', err.message, detail);
  if (status === 404) return errorResult('protocol', `${err.message} (no such ICAP service)`, detail);
  return errorResult('protocol', err.message, detail);
}

function failure(err: unknown, signal: AbortSignal, detail: Record<string, unknown>): EngineResult {
  if (signal.aborted) return errorResult('timeout', 'deadline reached', detail);
  if (err instanceof IcapStatusError) return statusResult(err, detail);
  if (err instanceof IcapProtocolError) return errorResult('protocol', err.message, detail);
  if (err instanceof IcapClosedError) return errorResult('io', err.message, detail);
  return { ...socketErrorResult(err, signal), detail };
}

export function createIcap(options: IcapOptions, deps: EngineDeps): Engine {
  const servers: ServerState[] = (options.servers ?? [options.server!]).map((address) => {
    const target = { host: address.host, port: address.port, service: options.service };
    return { target, label: serviceUri(target), options: null, expires: 0, pending: null, active: 0, waiting: [] };
  });
  const sockets = new Set<Socket>();
  let preferred = 0;
  let istag: string | null = null;

  /** Runs one request on a fresh connection, destroyed when done or when `signal` aborts. */
  async function exchange<T>(target: IcapTarget, signal: AbortSignal, talk: (socket: Socket, reader: ByteReader) => Promise<T>): Promise<T> {
    const socket = await connectTo(target, signal);
    const reader = readerFor(socket);
    sockets.add(socket);
    const onAbort = () => socket.destroy();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      return await talk(socket, reader);
    } finally {
      signal.removeEventListener('abort', onAbort);
      socket.destroy();
      sockets.delete(socket);
    }
  }

  async function fetchOptions(state: ServerState, signal: AbortSignal): Promise<ServiceOptions> {
    const reply = await exchange(state.target, signal, (socket, reader) => sendWhileReading(socket, reader,
      () => write(socket, optionsRequest(state.target))).reply);
    if (reply.status !== 200) throw new IcapStatusError(reply.status, reply.reason, `OPTIONS ${state.label}`);
    const found = parseOptions(reply);
    if (!found.methods.includes('RESPMOD')) {
      throw new IcapProtocolError(`ICAP service ${state.label} does not offer RESPMOD (Methods: ${found.methods.join(', ') || 'none'})`);
    }
    if (found.istag !== state.options?.istag) {
      deps.log.info({ engine: options.name, server: state.label, istag: found.istag }, 'ICAP service tag');
    }
    state.options = found;
    state.expires = Date.now() + (options.optionsTtl ?? found.ttlMs ?? DEFAULT_OPTIONS_TTL_MS);
    istag = found.istag ?? istag;
    return found;
  }

  function currentOptions(state: ServerState, signal: AbortSignal): Promise<ServiceOptions> {
    if (state.options && Date.now() < state.expires) return Promise.resolve(state.options);
    // Shared by the scans that arrive meanwhile, so it runs to its own deadline, not one scan's.
    state.pending ??= fetchOptions(state, AbortSignal.timeout(options.timeout)).finally(() => { state.pending = null; });
    return untilAborted(state.pending, signal);
  }

  function acquire(state: ServerState, limit: number | null, signal: AbortSignal): Promise<void> {
    if (limit === null || state.active < limit) {
      state.active++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      // A released connection is handed over as it is: `active` stays the same.
      const granted = () => { signal.removeEventListener('abort', onAbort); resolve(); };
      const onAbort = () => {
        const at = state.waiting.indexOf(granted);
        if (at >= 0) state.waiting.splice(at, 1);
        reject(signal.reason);
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      state.waiting.push(granted);
    });
  }

  function release(state: ServerState): void {
    const next = state.waiting.shift();
    if (next) next();
    else state.active--;
  }

  function respmod(state: ServerState, service: ServiceOptions, message: ScanMessage, context: ScanContext, signal: AbortSignal): Promise<IcapReply> {
    const preview = service.preview === null ? null : Math.min(service.preview, message.size);
    const head = respmodHead({
      target: state.target, httpHost: deps.hostname, path: `/queue/${encodeURIComponent(context.queueId)}.eml`,
      contentLength: message.size, preview, allow204: service.allow204, clientIp: context.client.replace(/[^0-9A-Fa-f:.]/g, ''),
    });
    return exchange(state.target, signal, async (socket, reader) => {
      let from = 0;
      if (preview !== null) {
        const whole = preview === message.size;
        const first = sendWhileReading(socket, reader, async () => {
          await write(socket, head);
          if (preview > 0) await sendChunks(socket, message.open({ start: 0, end: preview - 1 }));
          await write(socket, whole ? IEOF_CHUNK : LAST_CHUNK);
        });
        const reply = await first.reply;
        if (reply.status !== 100) return reply;
        if (whole) throw new IcapProtocolError('100 Continue after the whole message was sent ("0; ieof")');
        await first.sent;
        from = preview;
      }
      const rest = sendWhileReading(socket, reader, async () => {
        if (preview === null) await write(socket, head);
        await sendChunks(socket, message.open({ start: from }));
        await write(socket, LAST_CHUNK);
      });
      const reply = await rest.reply;
      if (reply.status === 100) throw new IcapProtocolError('a second 100 Continue');
      return reply;
    });
  }

  async function interpret(reply: IcapReply, message: ScanMessage, signal: AbortSignal, detail: Record<string, unknown>): Promise<EngineResult> {
    if (reply.status === 204) return { outcome: { status: 'clean' }, detail };
    if (reply.status !== 200) return statusResult(new IcapStatusError(reply.status, reply.reason, 'RESPMOD'), detail);
    const named = threatFromHeaders(reply.headers) ?? (reply.http && threatFromHeaders(reply.http.headers));
    if (named) return avFinding(named, detail);
    if (!reply.http) return errorResult('protocol', 'ICAP 200 without an encapsulated HTTP response', detail);
    detail.httpStatus = reply.http.status;
    const fromPage = () => (reply.body && threatFromPage(reply.body.sample)) ?? 'unknown';
    if (reply.http.status === 403) return avFinding(fromPage(), detail);
    if (reply.http.status !== 200) return errorResult('protocol', `ICAP 200 carrying an HTTP ${reply.http.status} ${reply.http.reason}`, detail);
    // Without 204 the server echoes the message; a changed body means it removed something.
    if (await sameAsMessage(reply, message, signal)) return { outcome: { status: 'clean' }, detail };
    return { outcome: { status: 'infected', signature: fromPage() }, detail: { ...detail, modified: true } };
  }

  async function scanOn(state: ServerState, message: ScanMessage, context: ScanContext, signal: AbortSignal): Promise<EngineResult> {
    const detail: Record<string, unknown> = { server: state.label };
    try {
      const service = await currentOptions(state, signal);
      detail.istag = service.istag;
      await acquire(state, service.maxConnections, signal);
      let reply: IcapReply;
      try {
        reply = await respmod(state, service, message, context, signal);
      } finally {
        release(state);
      }
      detail.icapStatus = reply.status;
      const tag = unquote(reply.headers.get('istag'));
      if (tag !== null) {
        detail.istag = tag;
        istag = tag;
        // The service changed (new signatures, new settings): ask OPTIONS again before the next scan.
        if (tag !== service.istag) state.expires = 0;
      }
      return await interpret(reply, message, signal, detail);
    } catch (err) {
      return failure(err, signal, detail);
    }
  }

  return {
    name: options.name,
    kind: 'av',
    version: () => istag,
    async scan(message, context, signal) {
      let result: EngineResult = errorResult('refused', 'no ICAP server configured');
      for (let i = 0; i < servers.length; i++) {
        const index = (preferred + i) % servers.length;
        result = await scanOn(servers[index], message, context, signal);
        const outcome = result.outcome;
        const unreachable = outcome.status === 'error' && (outcome.error === 'refused' || outcome.error === 'io');
        if (!unreachable) {
          preferred = index;
          return result;
        }
        if (signal.aborted) return errorResult('timeout', 'deadline reached', result.detail);
        if (i < servers.length - 1) {
          deps.log.warn({ engine: options.name, server: servers[index].label, error: (outcome as { message: string }).message }, 'ICAP server unavailable, trying the next');
        }
      }
      return result;
    },
    async ping(signal) {
      for (const state of servers) {
        try {
          await fetchOptions(state, signal);
          return true;
        } catch (err) {
          deps.log.debug({ engine: options.name, server: state.label, err: (err as Error).message }, 'ICAP OPTIONS failed');
        }
      }
      return false;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
    },
  };
}

export const icapDefinition = { type: 'icap', kind: 'av', schema: icapOptions, create: createIcap } as const;
