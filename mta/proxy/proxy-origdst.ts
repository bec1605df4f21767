/*
 * The original destination of a connection that netfilter redirected to the proxy listener
 * (DNAT or REDIRECT): the address and port the client dialled, before the rewrite, read from
 * the socket through the native addon in native/original-dst (SO_ORIGINAL_DST; Node has no API
 * for it). The addon is built at install and may be missing, so loading it is a value: proxy
 * mode reports the reason at start and the rest of Ichidan runs without it.
 *
 * Takes: an accepted, still open net.Socket straight from the listener (not a TLSSocket
 * wrapped around it: its handle has no fd).
 * Gives: `loadOriginalDst()`, a reader giving { address, port, family } for a redirected
 * connection and null for one addressed to the listener itself, or { error } saying why the
 * addon cannot be used (not Linux, not built, fails to load). The reader throws when the socket
 * has no file descriptor or the kernel refuses the question (the error's code is the errno).
 * A dual-stack listener's IPv4 connection (local address ::ffff:a.b.c.d) gets family 4.
 * Network: none; it asks the kernel's connection tracking about a socket already open.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { packageRoot } from '../mta-package.js';

export interface OriginalDst {
  address: string;
  port: number;
  family: 4 | 6;
}

export type OriginalDstReader = (socket: Socket) => OriginalDst | null;

interface Addon {
  originalDst(fd: number): OriginalDst | null;
}

/** Reaches into Node's internals because no public API exposes a TCP socket's descriptor. */
function socketFd(socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw new Error('originalDst: the socket has no file descriptor (closed, or not a plain TCP socket)');
  }
  return fd;
}

export function loadOriginalDst(): OriginalDstReader | { error: string } {
  if (process.platform !== 'linux') {
    return { error: `the original destination (SO_ORIGINAL_DST) exists only on Linux, this is ${process.platform}` };
  }
  const root = packageRoot();
  if (root === null) return { error: 'no package.json above mta/proxy/proxy-origdst, so the addon cannot be found' };
  const file = join(root, 'native', 'original-dst', 'build', 'Release', 'original_dst.node');
  if (!existsSync(file)) {
    return {
      error: `the SO_ORIGINAL_DST addon is not built (${file} is missing): run "node scripts/build-addon.mjs", which needs python3, make, g++ and Node's headers`,
    };
  }
  let addon: Addon;
  try {
    addon = createRequire(import.meta.url)(file) as Addon;
  } catch (error) {
    return { error: `the SO_ORIGINAL_DST addon ${file} does not load (${(error as Error).message}); rebuild it with "node scripts/build-addon.mjs"` };
  }
  if (typeof addon.originalDst !== 'function') return { error: `${file} exports no originalDst function; rebuild it` };
  return (socket) => addon.originalDst(socketFd(socket));
}
