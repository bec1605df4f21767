/*
 * Known senders' own accept queue. Under a flood the kernel's accept queue of an mx listener fills
 * with the flood's connections, and a known sender's connection waits its turn among them before
 * Ichidan can even see who it is: the door decides per connection, but only once accepted. Here
 * the listener is two sockets on the same address and port (SO_REUSEPORT) and the kernel itself
 * picks the queue of each new connection by its source address, with the program
 * admission/admission-known-filter.ts writes: known senders' to one, everyone else's to the other.
 * Both queues feed the same smtp-server, so a known sender's connection is met as soon as the
 * event loop turns, whatever the other queue holds. A third socket takes unknown senders'
 * connections while they are refused at connect (overload): a thread of the addon answers each
 * with the door's 421 and closes it, so a flood being refused costs the event loop nothing. Below
 * overload the same thread guards the general queue: once admission.knownQueueGuard connections
 * wait in it, it sends everyone else to itself at once, within milliseconds of the flood and
 * without the event loop (which, busy with the flood's first connections, would see it late); the
 * daemon takes the surge in as overload at its next look.
 *
 * Takes: the native addon in native/reuseport (built at install; a machine without it, or a kernel
 *   that refuses the program, listens the ordinary way and says why), the listener's address, port
 *   and backlog, and the networks to steer (trusted and tenants' networks, pinned and known
 *   senders' networks, in that order; the daemon gives them again as they change).
 * Gives: `KnownQueue.open` — the general queue's descriptor (for smtp-server's own listen) and a
 *   server for the known queue that hands each connection to `forward`; `steer(steering)`, which
 *   replaces the kernel's program when the networks or the refusing changed (the refusing only
 *   while every known network fits in the program: else a known sender left out would be refused);
 *   the networks steered, those left out (past the kernel's 4,096 instructions), the connections
 *   the known queue took and those the refusing thread answered; `takeSurge()`, a flood the guard
 *   met since the last call. A guard past what the general queue can hold (the listener's backlog,
 *   or the kernel's somaxconn if lower) fires when it is full.
 * Not in a worker of `ichidan start --workers`: there the primary owns the listening sockets.
 * Network: listens on the listener's address and port; nothing else.
 */
import { closeSync, existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { GENERAL_QUEUE, knownFilter, KNOWN_QUEUE, REFUSE_QUEUE } from '../admission/admission-known-filter.js';
import { packageRoot } from '../mta-package.js';

export interface ReuseportAddon {
  /** `count` sockets sharing `address` and `port` (0: one free port for all), listening; their descriptors in the group's order. */
  listenShared(address: string, port: number, backlog: number, count: number): number[];
  /** Replaces the program that picks a group member for each new connection. */
  steer(fd: number, program: Buffer): void;
  /** A thread answers every connection of the listening socket `fd` with `line` and closes it; it owns `fd` from now on. */
  refuse(fd: number, line: string): void;
  /** Connections the thread on `fd` answered. */
  refused(fd: number): number;
  /** Ends the thread on `fd`, closing what it holds and `fd`. */
  stopRefusing(fd: number): void;
  /**
   * Attaches `program` to the group and arms the thread on `fd` to attach `surgeProgram` once
   * `surgeAt` connections wait in `generalFd`'s queue (null or 0: no guard); false, and nothing
   * changed, when the guard fired since its count was `acknowledged`.
   */
  steerGuarded(fd: number, generalFd: number, program: Buffer, surgeProgram: Buffer | null, surgeAt: number, acknowledged: number): boolean;
  /** The line the thread on `fd` answers with from now on. */
  setRefusal(fd: number, line: string): void;
  /** How often the guard on `fd` fired, and the general queue's length the last time. */
  surges(fd: number): { count: number; waiting: number };
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
    if (['listenShared', 'steer', 'refuse', 'refused', 'stopRefusing', 'steerGuarded', 'setRefusal', 'surges'].some((f) => typeof addon[f as keyof ReuseportAddon] !== 'function')) return { error: `${file} lacks a function this version needs; rebuild it` };
    return addon as ReuseportAddon;
  } catch (error) {
    return { error: `the reuseport addon ${file} does not load (${(error as Error).message}); rebuild it with "node scripts/build-addon.mjs"` };
  }
}

/** The kernel's cap on a listening socket's backlog (net.core.somaxconn; 4096 where it cannot be read). */
function somaxconn(): number {
  try {
    const n = Number.parseInt(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'), 10);
    return Number.isFinite(n) && n > 0 ? n : 4096;
  } catch {
    return 4096;
  }
}

export interface KnownQueueStatus {
  /** Networks the kernel steers to the known queue now. */
  networks: number;
  /** Networks given that did not fit in the program. */
  left: number;
  /** Connections the known queue took since the listener started. */
  accepted: number;
  /** Whether unknown senders are answered 421 by the refusing thread now (overload, or a surge its guard met). */
  refusing: boolean;
  /** Connections the refusing thread answered since the listener started. */
  refused: number;
  /** Floods the guard met at the socket (the general queue at the surge) since the listener started. */
  surges: number;
}

/** What the kernel is to do: the known queue's networks, the blocked ones, and whether everyone else is refused at once. */
export interface Steering {
  networks: readonly string[];
  blocked: readonly string[];
  /** Unknown senders to the refusing thread (overload, refused at connect); honoured only when every known network fits. */
  refuseOthers: boolean;
  /** Below overload: the general queue's length at which the guard does so itself (null: no guard; also only when every known network fits). */
  surgeAt: number | null;
  /** The line the refusing thread answers with (the door's reply, without its CRLF). */
  refusal: string;
}

/** A flood the guard met: the general queue's length then. */
export interface Surge {
  waiting: number;
}

export class KnownQueue {
  /** The known queue's server: each connection it accepts goes to `forward`. */
  readonly server: Server;
  #networks = 0;
  #left = 0;
  #accepted = 0;
  #refusing = false;
  /** The line the refusing thread answers with now. */
  #refusal = '';
  /** The guard's count of surges as last taken in (`takeSurge`). */
  #acknowledged = 0;

  /** The most connections the general queue can hold: a guard past it fires when it is full. */
  readonly #holds: number;

  private constructor(private readonly addon: ReuseportAddon, private readonly fd: number, private readonly refuseFd: number, backlog: number, forward: (socket: Socket) => void) {
    this.#holds = Math.min(backlog, somaxconn());
    this.server = createServer((socket) => {
      this.#accepted++;
      forward(socket);
    });
  }

  /**
   * Three sockets on `address`:`port` — the general queue (its descriptor for smtp-server), the
   * known queue (`forward` gets each of its connections) and the refusing one (answered the
   * steering's `refusal` by the addon's thread) — the kernel's program in place before any listens
   * in Node. Throws (the errno's name as code) when the kernel refuses a step; nothing stays open then.
   */
  static async open(addon: ReuseportAddon, where: { address: string; port: number; backlog: number }, steering: Steering, forward: (socket: Socket) => void): Promise<{ queue: KnownQueue; generalFd: number }> {
    const fds = addon.listenShared(where.address, where.port, where.backlog, 3);
    const [general, known, refuse] = [fds[GENERAL_QUEUE], fds[KNOWN_QUEUE], fds[REFUSE_QUEUE]];
    const queue = new KnownQueue(addon, general, refuse, where.backlog, forward);
    try {
      addon.refuse(refuse, `${steering.refusal}\r\n`);
      queue.#refusal = steering.refusal;
    } catch (err) {
      for (const fd of fds) closeSync(fd);
      throw err;
    }
    try {
      queue.steer(steering);
    } catch (err) {
      // The refusing descriptor is the thread's now, closed with it.
      addon.stopRefusing(refuse);
      closeSync(general);
      closeSync(known);
      throw err;
    }
    try {
      await new Promise<void>((resolve, reject) => {
        queue.server.once('error', reject);
        queue.server.listen({ fd: known, backlog: where.backlog }, () => { queue.server.off('error', reject); resolve(); });
      });
    } catch (err) {
      // The known queue's descriptor is the server's now, closed with it; the refusing one is the thread's.
      queue.server.close();
      addon.stopRefusing(refuse);
      closeSync(general);
      throw err;
    }
    return { queue, generalFd: general };
  }

  /**
   * Gives the kernel the program for `steering` (the daemon's steering calls it when something it
   * is made from changed), and arms the guard below overload. While a surge the guard met is not
   * taken in yet (`takeSurge`), the guard's program stays.
   */
  steer(steering: Steering): void {
    if (steering.refusal !== this.#refusal) {
      this.addon.setRefusal(this.refuseFd, `${steering.refusal}\r\n`);
      this.#refusal = steering.refusal;
    }
    const normal = knownFilter(steering.networks, { blocked: steering.blocked });
    // A known network left out of the program would be refused with everyone else: the door decides then.
    const refusing = steering.refuseOthers || steering.surgeAt ? knownFilter(steering.networks, { blocked: steering.blocked, others: REFUSE_QUEUE }) : null;
    const fits = refusing !== null && refusing.left === 0;
    const now = steering.refuseOthers && fits ? refusing : normal;
    const guard = !steering.refuseOthers && steering.surgeAt && fits ? refusing.program : null;
    const surgeAt = guard ? Math.min(steering.surgeAt!, this.#holds) : 0;
    if (!this.addon.steerGuarded(this.refuseFd, this.fd, now.program, guard, surgeAt, this.#acknowledged)) {
      this.#refusing = true;
      return;
    }
    this.#networks = now.networks;
    this.#left = now.left;
    this.#refusing = now === refusing;
  }

  /** A surge the guard met since the last call (now taken in: the next steering replaces its program), or null. */
  takeSurge(): Surge | null {
    const { count, waiting } = this.addon.surges(this.refuseFd);
    if (count === this.#acknowledged) return null;
    this.#acknowledged = count;
    this.#refusing = true;
    return { waiting };
  }

  status(): KnownQueueStatus {
    const surges = this.addon.surges(this.refuseFd).count;
    // A surge not taken in yet: the guard's program is in force.
    return { networks: this.#networks, left: this.#left, accepted: this.#accepted, refusing: this.#refusing || surges > this.#acknowledged, refused: this.addon.refused(this.refuseFd), surges };
  }

  close(): void {
    this.server.close();
    this.addon.stopRefusing(this.refuseFd);
  }
}
