/*
 * clamd — ClamAV's daemon, reached over TCP or a unix socket with INSTREAM.
 *
 * Takes: the spool file, streamed to clamd in chunks (clamd never needs to share a filesystem
 *   with Ichidan).
 * Gives: clean, infected (the signature name), unscannable (Heuristics.Limits.Exceeded.*: clamd
 *   with AlertExceedsMax met one of its Max* limits and did not scan the content whole; not a
 *   failure of clamd), or an error: refused (no server answered),
 *   too-large (clamd's StreamMaxLength), protocol (any other reply), timeout.
 * Network: the configured clamd servers, tried in order: a server that refuses the connection
 *   (nothing listening) is skipped for the next one, within the one deadline; a server that
 *   fails mid-scan is reported, not retried elsewhere, since the deadline is shared. The last
 *   server that answered is tried first next time.
 * Settings: engines[].servers (list of {host, port} or {socket}), timeout, maxSize.
 * Version: clamd's `VERSION` (engine and signature database), asked on first use and every hour.
 */
import type { Socket } from 'node:net';
import { z } from 'zod';
import { daemonAddress, describeAddress, engineCommon, openSocket, type DaemonAddress } from '../engines-common.js';
import { avFinding, errorResult, socketErrorResult, type Engine, type EngineDeps, type EngineResult, type ScanMessage } from '../engine.js';
import { parseScanReply, readReply, sendInstream } from './clamd-protocol.js';

export const clamdOptions = z.strictObject({
  ...engineCommon({ timeout: '30s', maxSize: '25MB', oversize: 'unscannable' }),
  type: z.literal('clamd'),
  /** clamd servers, tried in order (failover); TCP `{host, port}` or `{socket: path}`. */
  servers: z.array(daemonAddress(3310)).min(1).default([{ host: '127.0.0.1', port: 3310 }] as never),
});
export type ClamdOptions = z.output<typeof clamdOptions>;

const VERSION_TTL_MS = 3_600_000;

/** Runs one exchange on a fresh connection, destroying it when done or when `signal` aborts. */
async function exchange<T>(address: DaemonAddress, signal: AbortSignal, talk: (socket: Socket) => Promise<T>): Promise<T> {
  const socket = await openSocket(address, signal);
  const onAbort = () => socket.destroy();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    return await talk(socket);
  } finally {
    signal.removeEventListener('abort', onAbort);
    socket.destroy();
  }
}

export function createClamd(options: ClamdOptions, deps: EngineDeps): Engine {
  const servers = options.servers as DaemonAddress[];
  let preferred = 0;
  let version: string | null = null;
  let versionAt = 0;

  let asking: Promise<void> | null = null;
  const triedAt = new Map<DaemonAddress, number>();

  /** Asks `address` for its version when the one known is older than an hour; one question at a time, one try per server a minute. */
  function refreshVersion(address: DaemonAddress): Promise<void> {
    const now = Date.now();
    if (now - versionAt < VERSION_TTL_MS || asking || now - (triedAt.get(address) ?? 0) < 60_000) return asking ?? Promise.resolve();
    triedAt.set(address, now);
    asking = exchange(address, AbortSignal.timeout(2_000), async (s) => {
      const reply = readReply(s);
      s.write('zVERSION\0');
      return reply;
    }).then((text) => {
      version = text.trim();
      versionAt = Date.now();
    }, (err: Error) => {
      deps.log.debug({ engine: options.name, err: err.message }, 'clamd VERSION failed');
    }).finally(() => { asking = null; });
    return asking;
  }

  async function scanOn(address: DaemonAddress, message: ScanMessage, signal: AbortSignal): Promise<EngineResult> {
    const line = await exchange(address, signal, async (socket) => {
      const reply = readReply(socket);
      // The reply may arrive (and the socket close) while the body is still being sent.
      const sending = sendInstream(socket, message.open(), signal).catch((err: NodeJS.ErrnoException) => {
        if (err?.code !== 'EPIPE' && err?.code !== 'ECONNRESET') socket.destroy(err);
      });
      void sending;
      return reply;
    });
    const reply = parseScanReply(line);
    const detail = { server: describeAddress(address) };
    switch (reply.kind) {
      case 'clean': return { outcome: { status: 'clean' }, detail };
      case 'found': return avFinding(reply.signature, detail);
      case 'size-limit': return errorResult('too-large', reply.text, detail);
      case 'error': return errorResult('protocol', `clamd: ${reply.text}`, detail);
      case 'garbled': return errorResult('protocol', `unexpected clamd reply "${reply.text.slice(0, 120)}"`, detail);
    }
  }

  return {
    name: options.name,
    kind: 'av',
    version: () => version,
    async scan(message, _context, signal) {
      let last: EngineResult = errorResult('refused', 'no clamd server configured');
      for (let i = 0; i < servers.length; i++) {
        const index = (preferred + i) % servers.length;
        const address = servers[index];
        // Asked beside the scan (its own connection). Only while no version is known yet is it waited
        // for, so that the first results are recorded with one; later scans never wait on it.
        const versionAsked = refreshVersion(address);
        try {
          const result = await scanOn(address, message, signal);
          preferred = index;
          if (version === null) await versionAsked;
          return result;
        } catch (err) {
          last = (err as NodeJS.ErrnoException)?.code === 'EPROTO' && !signal.aborted
            ? errorResult('protocol', (err as Error).message, { server: describeAddress(address) })
            : socketErrorResult(err, signal);
          if (signal.aborted) return last;
          // Failover only when this server could not take the scan at all.
          if (last.outcome.status === 'error' && last.outcome.error !== 'refused') return last;
          deps.log.warn({ engine: options.name, server: describeAddress(address), err: (err as Error).message }, 'clamd server unavailable, trying the next');
        }
      }
      return last;
    },
    async ping(signal) {
      for (const address of servers) {
        try {
          const reply = await exchange(address, signal, async (s) => {
            const r = readReply(s);
            s.write('zPING\0');
            return r;
          });
          if (reply.trim() === 'PONG') {
            await refreshVersion(address);
            return true;
          }
        } catch {
          // try the next server
        }
      }
      return false;
    },
    async close() {},
  };
}

export const clamdDefinition = { type: 'clamd', kind: 'av', schema: clamdOptions, create: createClamd } as const;
