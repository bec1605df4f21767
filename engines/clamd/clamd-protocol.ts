/*
 * clamd's socket protocol, the parts Ichidan uses: `zINSTREAM`, `zPING`, `zVERSION`.
 *
 * Takes: a connected socket (TCP or unix) and, for INSTREAM, the message as a stream.
 * Gives: clamd's one reply line (up to the NUL that ends it in the `z` command form).
 * Protocol: clamd(8) "INSTREAM": the command, then chunks each prefixed by its length as a
 *   4-byte big-endian integer, then a zero-length chunk. clamd answers `stream: OK`,
 *   `stream: <signature> FOUND`, or `<reason> ERROR` (e.g. `INSTREAM size limit exceeded. ERROR`
 *   when the stream passes its StreamMaxLength) and may close the connection before the client
 *   has finished sending, so the reply is read while writing and wins over a write error.
 */
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';

export type ClamdReply =
  | { kind: 'clean' }
  | { kind: 'found'; signature: string }
  | { kind: 'size-limit'; text: string }
  | { kind: 'error'; text: string }
  | { kind: 'garbled'; text: string };

/** Parses the reply to INSTREAM (without its terminating NUL). */
export function parseScanReply(line: string): ClamdReply {
  const text = line.trim();
  const m = /^(?:stream|\d+: stream): (.*)$/.exec(text);
  if (m) {
    const rest = m[1];
    if (rest === 'OK') return { kind: 'clean' };
    const found = /^(.+) FOUND$/.exec(rest);
    if (found) return { kind: 'found', signature: found[1] };
    if (/ ERROR$/.test(rest)) return { kind: /size limit/i.test(rest) ? 'size-limit' : 'error', text: rest };
    return { kind: 'garbled', text };
  }
  if (/ ERROR$/.test(text)) return { kind: /size limit/i.test(text) ? 'size-limit' : 'error', text };
  return { kind: 'garbled', text };
}

const MAX_REPLY = 4096;

/**
 * Reads bytes up to the first NUL (the `z` form's terminator). Rejects when the socket closes
 * first, when the reply grows past a sane length, or on a socket error before the reply is whole.
 */
export function readReply(socket: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let length = 0;
    const done = (err: Error | null, text?: string) => {
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
      if (err) reject(err);
      else resolve(text!);
    };
    const onData = (chunk: Buffer) => {
      const nul = chunk.indexOf(0);
      if (nul >= 0) {
        parts.push(chunk.subarray(0, nul));
        return done(null, Buffer.concat(parts).toString('latin1'));
      }
      parts.push(chunk);
      length += chunk.length;
      if (length > MAX_REPLY) done(Object.assign(new Error('clamd reply too long'), { code: 'EPROTO' }));
    };
    const onClose = () => {
      const text = Buffer.concat(parts).toString('latin1');
      done(Object.assign(new Error(`connection closed before the reply ended${text ? `: "${text.slice(0, 80)}"` : ''}`), { code: 'EPROTO' }));
    };
    // A write error (clamd closed early after refusing the size) is not the end: the reply may be in flight.
    const onError = (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE' || err.code === 'ECONNRESET') return;
      done(err);
    };
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.on('error', onError);
  });
}

/**
 * Writes `zINSTREAM\0`, the message in length-prefixed chunks, and the zero-length end chunk —
 * corked, so a small message leaves in one write; a large one is flushed whenever the socket's
 * buffer is full, waiting for it to drain.
 */
export async function sendInstream(socket: Socket, body: Readable, signal: AbortSignal): Promise<void> {
  const drained = () => new Promise<void>((resolve, reject) => {
    const onDrain = () => { cleanup(); resolve(); };
    const onClose = () => { cleanup(); reject(Object.assign(new Error('socket closed while sending'), { code: 'EPIPE' })); };
    const cleanup = () => { socket.off('drain', onDrain); socket.off('close', onClose); };
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
  const closed = () => Object.assign(new Error('socket closed while sending'), { code: 'EPIPE' });
  socket.cork();
  try {
    socket.write('zINSTREAM\0', 'latin1');
    for await (const chunk of body) {
      if (signal.aborted) throw signal.reason;
      if (socket.destroyed || !socket.writable) throw closed();
      const data = chunk as Buffer;
      // A zero-length chunk would end the stream early.
      if (data.length === 0) continue;
      const header = Buffer.allocUnsafe(4);
      header.writeUInt32BE(data.length, 0);
      socket.write(header);
      if (!socket.write(data)) {
        socket.uncork();
        await drained();
        socket.cork();
      }
    }
    if (socket.destroyed || !socket.writable) throw closed();
    socket.write(Buffer.alloc(4));
  } finally {
    body.destroy();
    socket.uncork();
  }
}
