/*
 * Settings every engine has, whatever its type, and the pieces adapters use to describe where
 * their daemon listens. Each adapter's options schema is `z.strictObject({ ...engineCommon(...),
 * type: z.literal('…'), …its own keys })`.
 */
import { connect, type Socket } from 'node:net';
import { z } from 'zod';
import { duration, size, port } from '../base/base-config.js';

export const engineName = z.string().regex(/^[a-z0-9][a-z0-9_-]*$/i, 'an engine name of letters, digits, "-" and "_"');

/**
 * The common keys, with per-type defaults for the deadline and the size limit (spamd is slow and
 * meant for small messages; clamd's own StreamMaxLength default is 25 MB), and for what a larger
 * message does: a safety check (AV, the attachment policy) that is not run must not wave the
 * message through, while spam scoring and sender authentication commonly skip large mail.
 */
export function engineCommon(defaults: { timeout: string; maxSize: string; oversize: Oversize }) {
  return {
    /** Unique name: used in logs, records, statistics, and the per-tenant engine lists. */
    name: engineName,
    /** Longest a scan may take; past it the scan is abandoned and counts as a timeout. */
    timeout: duration.prefault(defaults.timeout),
    /** Larger messages are not sent to this engine; `oversize` says what they do. */
    maxSize: size.prefault(defaults.maxSize),
    /**
     * A message larger than `maxSize`: `unscannable` — judged as a message that could not be fully
     * checked (`scanning.unscannable`: refused by default, or quarantined); `skip` — left to the
     * other engines, recorded as unscanned-by-size (X-Ichidan-Unscanned). Default: unscannable for
     * clamd, icap and policy; skip for spamd, rspamd and mailauth.
     */
    oversize: z.enum(['unscannable', 'skip']).default(defaults.oversize),
    /**
     * When the engine fails (timeout, refused, protocol error): `skip` leaves the decision to the
     * other engines and the quorum rule; `tempfail` answers 451 4.7.1 at once.
     */
    onError: z.enum(['skip', 'tempfail']).default('skip'),
    /** Scanned and recorded, never counted in the verdict: for trying a new engine on live mail. */
    shadow: z.boolean().default(false),
    /** Weight of a spam engine's normalised score in the weighted mean. */
    weight: z.number().positive().default(1),
    /**
     * The circuit breaker: after `failures` failures (timeouts, refusals, protocol errors) within
     * `window` the engine is skipped (counted as disabled) for `cooldown`, then one scan probes it.
     */
    breaker: z.strictObject({
      failures: z.number().int().positive().default(5),
      window: duration.prefault('60s'),
      cooldown: duration.prefault('30s'),
    }).prefault({}),
  };
}

/** A daemon reached over TCP (`host` + `port`) or a unix socket (`socket`). */
export const daemonAddress = (defaultPort: number) => z.union([
  z.strictObject({ host: z.string().min(1).default('127.0.0.1'), port: port.default(defaultPort) }),
  z.strictObject({ socket: z.string().min(1) }),
]);

export type DaemonAddress = { host: string; port: number } | { socket: string };

/** Connects to a daemon; the attempt is abandoned (socket destroyed) when `signal` aborts. */
export function openSocket(address: DaemonAddress, signal: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = 'socket' in address ? connect({ path: address.socket }) : connect({ host: address.host, port: address.port });
    const onAbort = () => { socket.destroy(); reject(signal.reason); };
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      signal.removeEventListener('abort', onAbort);
      if ('host' in address) socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', (err) => {
      signal.removeEventListener('abort', onAbort);
      reject(err);
    });
  });
}

export function describeAddress(a: DaemonAddress): string {
  return 'socket' in a ? `unix:${a.socket}` : `${a.host}:${a.port}`;
}

export type Oversize = 'unscannable' | 'skip';

export interface CommonOptions {
  name: string;
  timeout: number;
  maxSize: number;
  oversize: Oversize;
  onError: 'skip' | 'tempfail';
  shadow: boolean;
  weight: number;
  breaker: { failures: number; window: number; cooldown: number };
}
