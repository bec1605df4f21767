/*
 * Known senders' own accept queue. Under a flood the kernel's accept queue of an mx listener fills
 * with the flood's connections, and a known sender's connection waits its turn among them before
 * Ichidan can even see who it is: the door decides per connection, but only once accepted. Here
 * the listener is two sockets on the same address and port (SO_REUSEPORT) and the kernel itself
 * picks the queue of each new connection by its source address, with the program
 * admission/admission-known-filter.ts writes: known senders' to one, everyone else's to the other.
 * Both queues feed the same smtp-server, so a known sender's connection is met as soon as the
 * event loop turns, whatever the other queue holds.
 *
 * Takes: the native addon in native/reuseport (built at install; a machine without it, or a kernel
 *   that refuses the program, listens the ordinary way and says why), the listener's address, port
 *   and backlog, and the networks to steer (trusted and tenants' networks, pinned and known
 *   senders' networks, in that order; the daemon gives them again as they change).
 * Gives: `KnownQueue.open` — the general queue's descriptor (for smtp-server's own listen) and a
 *   server for the known queue that hands each connection to `forward`; `steer(networks)`, which
 *   replaces the kernel's program when the networks changed; the networks steered, those left out
 *   (past the kernel's 4,096 instructions) and the connections the known queue took.
 * Not in a worker of `ichidan start --workers`: there the primary owns the listening sockets.
 * Network: listens on the listener's address and port; nothing else.
 */
import { closeSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { knownFilter, KNOWN_QUEUE } from '../admission/admission-known-filter.js';
import { packageRoot } from '../mta-package.js';

export interface ReuseportAddon {
  /** `count` sockets sharing `address` and `port` (0: one free port for all), listening; their descriptors in the group's order. */
  listenShared(address: string, port: number, backlog: number, count: number): number[];
  /** Replaces the program that picks a group member for each new connection. */
  steer(fd: number, program: Buffer): void;
}

/** The addon, or why it cannot be used (not Linux, not built, does not load). */
export function loadReuseport(): ReuseportAddon | { error: string } {
  if (process.platform !== 'linux') return { error: `a steered accept queue needs Linux (SO_ATTACH_REUSEPORT_CBPF), this is ${process.platform}` };
  const root = packageRoot();
  if (root === null) return { error: 'no package.json above mta/ingress, so the reuseport addon cannot be found' };
  const file = join(root, 'native', 'reuseport', 'build', 'Release', 'reuseport.node');
  if (!existsSync(file)) return { error: `the reuseport addon is not built (${file} is missing): run "node scripts/build-addon.mjs"` };
  try {
    const addon = createRequire(import.meta.url)(file) as Partial<ReuseportAddon>;
    if (typeof addon.listenShared !== 'function' || typeof addon.steer !== 'function') return { error: `${file} lacks listenShared or steer; rebuild it` };
    return addon as ReuseportAddon;
  } catch (error) {
    return { error: `the reuseport addon ${file} does not load (${(error as Error).message}); rebuild it with "node scripts/build-addon.mjs"` };
  }
}

export interface KnownQueueStatus {
  /** Networks the kernel steers to the known queue now. */
  networks: number;
  /** Networks given that did not fit in the program. */
  left: number;
  /** Connections the known queue took since the listener started. */
  accepted: number;
}

export class KnownQueue {
  #steered = '';
  #networks = 0;
  #left = 0;
  #accepted = 0;

  private constructor(private readonly addon: ReuseportAddon, private readonly fd: number, readonly server: Server) {}

  /**
   * Two sockets on `address`:`port`, the kernel's program in place before either listens in Node;
   * `forward` gets each connection of the known queue. Throws (the errno's name as code) when the
   * kernel refuses a step; nothing stays open then.
   */
  static async open(addon: ReuseportAddon, where: { address: string; port: number; backlog: number }, networks: readonly string[], forward: (socket: Socket) => void): Promise<{ queue: KnownQueue; generalFd: number }> {
    const fds = addon.listenShared(where.address, where.port, where.backlog, 2);
    const general = fds[0];
    const known = fds[KNOWN_QUEUE];
    let queue: KnownQueue | null = null;
    const server = createServer((socket) => {
      if (queue) queue.#accepted++;
      forward(socket);
    });
    queue = new KnownQueue(addon, general, server);
    try {
      queue.steer(networks);
    } catch (err) {
      for (const fd of fds) closeSync(fd);
      throw err;
    }
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ fd: known, backlog: where.backlog }, () => { server.off('error', reject); resolve(); });
      });
    } catch (err) {
      // The known queue's descriptor is the server's now, closed with it; the general one is still ours.
      server.close();
      closeSync(general);
      throw err;
    }
    return { queue, generalFd: general };
  }

  /** Gives the kernel the program for `networks` unless they are the ones it has. */
  steer(networks: readonly string[]): void {
    const key = networks.join(',');
    if (key === this.#steered) return;
    const filter = knownFilter(networks);
    this.addon.steer(this.fd, filter.program);
    this.#steered = key;
    this.#networks = filter.networks;
    this.#left = filter.left;
  }

  status(): KnownQueueStatus {
    return { networks: this.#networks, left: this.#left, accepted: this.#accepted };
  }

  close(): void {
    this.server.close();
  }
}
