/*
 * What the proxy listener watches of each client connection, beside smtp-server, to relay a
 * pipelined group as one (RFC 2920):
 *   - the chunk of the client's bytes smtp-server's command parser works on, by reference (no copy,
 *     no per-chunk work but keeping it; not the socket's newest chunk: while a command waits for the
 *     destination, later ones wait behind it): when smtp-server hands over a RCPT, the RCPTs the
 *     client sent right after it and whether DATA followed are read off that chunk, so that they go
 *     to the destination in the RCPT's group; when it hands over a MAIL, whether the client sent
 *     nothing after it (it waits for the reply);
 *   - the replies held back while a command waits for the destination (the socket corked), so
 *     that the replies to a group (MAIL's, each RCPT's, DATA's 354) leave in one write.
 * Takes: the client's TCP socket and smtp-server's connection for it at accept, its TLS socket after
 *   STARTTLS (smtp-server then reads with a parser it makes anew, followed the same way); gives `dataFollows`,
 * `rcptsAfter`, `endsWith`, `hold` and `release` per connection key ("address|port").
 */
import type { Socket } from 'node:net';
import { rcptLinesAfter, type FollowingLines } from './proxy-lookahead.js';

/** What smtp-server's connection offers of its command parser: the one it reads with, and the making of the next (after STARTTLS). */
export interface ParserOwner {
  _parser: ChunkParser | false;
  _createParser(): ChunkParser;
}

interface ChunkParser {
  _write(chunk: Buffer, encoding: string, done: (err?: Error | null) => void): void;
}

interface Tap {
  /** The chunk the command parser works on now. */
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
  watch(key: string, socket: Socket, connection: ParserOwner): void {
    const tap: Tap = { last: null, waiting: 0, corked: null, socket };
    this.#taps.set(key, tap);
    // Each chunk the parser takes is noted before it reads a line of it: when smtp-server hands over
    // a command, it came in that chunk, and the lines after it there are what the parser reads next.
    const follow = (parser: ChunkParser | false) => {
      if (!parser) return;
      const write = parser._write;
      parser._write = function (chunk, encoding, done) {
        tap.last = chunk;
        return write.call(this, chunk, encoding, done);
      };
    };
    follow(connection._parser);
    const create = connection._createParser;
    connection._createParser = function () {
      const parser = create.call(this);
      follow(parser);
      return parser;
    };
    socket.once('close', () => this.#taps.delete(key));
  }

  /** After STARTTLS the TLS socket carries the replies (and a new parser, followed too, the commands). */
  secured(key: string, socket: Socket): void {
    const tap = this.#taps.get(key);
    if (!tap) return;
    tap.socket = socket;
    tap.last = null;
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
