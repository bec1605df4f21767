/*
 * What the proxy listener watches of each client connection, beside smtp-server, to relay a
 * pipelined group as one (RFC 2920):
 *   - the last chunk the client sent, by reference (no copy, no per-chunk work but keeping it): when
 *     smtp-server hands over a RCPT, whether the client sent DATA right after it is read off the
 *     chunk's end, so that DATA goes to the destination in the RCPT's group; when it hands over a
 *     MAIL, whether the client sent nothing after it (it waits for the reply);
 *   - the replies held back while a command waits for the destination (the socket corked), so
 *     that the replies to a group (MAIL's, each RCPT's, DATA's 354) leave in one write.
 * Takes: the client's TCP socket at accept, its TLS socket after STARTTLS; gives `dataFollows`,
 * `rcptsAfter`, `endsWith`, `hold` and `release` per connection key ("address|port").
 */
import type { Socket } from 'node:net';
import { rcptLinesAfter, type FollowingLines } from './proxy-lookahead.js';

interface Tap {
  last: Buffer | null;
  waiting: number;
  corked: Socket | null;
  socket: Socket;
}

/** Does `chunk` end with the command line `raw` (as received, without its line end), then DATA? */
export function dataFollows(chunk: Buffer | null, raw: Buffer | undefined): boolean {
  if (!chunk || !raw) return false;
  const start = Math.max(0, chunk.length - raw.length - 8);
  const tail = chunk.toString('latin1', start);
  const data = /\r?\nDATA\r?\n$/i.exec(tail);
  if (!data) return false;
  const line = tail.slice(0, data.index);
  const text = raw.toString('latin1');
  if (!line.endsWith(text)) return false;
  // The whole line, not one that merely ends like it.
  const at = start + line.length - text.length;
  return at === 0 || chunk[at - 1] === 0x0a;
}

/** Does `chunk` end with the whole command line `raw` (as received, without its line end), nothing after it? */
export function endsWithCommand(chunk: Buffer | null, raw: Buffer | undefined): boolean {
  if (!chunk || !raw) return false;
  const end = chunk.length >= 2 && chunk[chunk.length - 2] === 0x0d ? chunk.length - 2 : chunk.length - 1;
  if (end < raw.length || chunk[chunk.length - 1] !== 0x0a) return false;
  const at = end - raw.length;
  if (!chunk.subarray(at, end).equals(raw)) return false;
  return at === 0 || chunk[at - 1] === 0x0a;
}

export class ClientTaps {
  readonly #taps = new Map<string, Tap>();

  /** A client connection accepted: watched until it closes. */
  watch(key: string, socket: Socket): void {
    const tap: Tap = { last: null, waiting: 0, corked: null, socket };
    this.#taps.set(key, tap);
    // Before smtp-server's own reader: when it hands over a command, the chunk it came in is known.
    socket.prependListener('data', (d: Buffer) => { tap.last = d; });
    socket.once('close', () => this.#taps.delete(key));
  }

  /** After STARTTLS the TLS socket carries the commands and the replies. */
  secured(key: string, socket: Socket): void {
    const tap = this.#taps.get(key);
    if (!tap) return;
    tap.socket = socket;
    tap.last = null;
    socket.prependListener('data', (d: Buffer) => { tap.last = d; });
  }

  /** Did the client send DATA right after the command line `raw`, in the chunk it came in? */
  dataFollows(key: string, raw: Buffer | undefined): boolean {
    return dataFollows(this.#taps.get(key)?.last ?? null, raw);
  }

  /** The RCPT lines the client sent right after the command line `raw`, in the chunk it came in. */
  rcptsAfter(key: string, raw: Buffer | undefined): FollowingLines {
    return rcptLinesAfter(this.#taps.get(key)?.last ?? null, raw);
  }

  /** Was the command line `raw` the last thing the client sent (in the chunk it came in)? */
  endsWith(key: string, raw: Buffer | undefined): boolean {
    return endsWithCommand(this.#taps.get(key)?.last ?? null, raw);
  }

  /** A command starts waiting: the client's replies are held back until none does. */
  hold(key: string): void {
    const tap = this.#taps.get(key);
    if (!tap) return;
    tap.waiting++;
    if (tap.corked || tap.socket.destroyed) return;
    tap.corked = tap.socket;
    tap.socket.cork();
  }

  /**
   * A command was answered. The replies go out once nothing waits any more, as soon as the
   * callbacks under way are done: what smtp-server says next in them (the next pipelined command's
   * reply, DATA's 354: it goes on with the client's next command within the answer's callback)
   * goes in the same write, and nothing else the event loop has queued (other sessions' reads,
   * under load) holds it back.
   */
  release(key: string): void {
    const tap = this.#taps.get(key);
    if (!tap) return;
    tap.waiting--;
    process.nextTick(() => {
      if (tap.waiting > 0 || !tap.corked) return;
      const socket = tap.corked;
      tap.corked = null;
      socket.uncork();
    });
  }
}
