/*
 * Deadlines that trickling bytes do not reset (Postfix's smtpd_per_request_deadline and
 * smtpd_min_data_rate).
 *
 * smtp-server's idle timeout restarts with every byte, so a client sending one byte every few
 * seconds holds its connection forever. This guard watches the bytes of one connection (the
 * plaintext socket, then the TLS socket after STARTTLS) and ends the session with 421 4.4.2:
 * - outside DATA, when a command line has been incomplete for `limits.commandDeadline`
 *   (from its first byte to its LF);
 * - during DATA, when the time since the 354 exceeds a grace plus the bytes received so far divided
 *   by `limits.minDataRate` bytes per second. The grace is `commandDeadline`, or `commandTimeout`
 *   when the line deadline is off (0), as Postfix's smtpd_timeout is the base of its data rate:
 *   turning one limit off never turns the other into an instant breach.
 * Waiting for a reply (the client has sent whole lines and is idle) is never counted: that is the
 * idle timeout's business (limits.commandTimeout). RFC 5321 section 4.5.3.2, RFC 3463 (4.4.2).
 * Settings: limits.commandDeadline, limits.minDataRate, limits.commandTimeout (read at each event,
 * so a reload applies).
 */
import type { Socket } from 'node:net';

const LF = 0x0a;

export interface DeadlineSettings {
  commandDeadline: number;
  minDataRate: number;
  commandTimeout: number;
}

export type DeadlineBreach = 'command' | 'data';

export class SlowClientGuard {
  #socket: Socket | null = null;
  readonly #onData = (chunk: Buffer) => this.#feed(chunk);
  #lineTimer: NodeJS.Timeout | null = null;
  #data: { started: number; bytes: number; timer: NodeJS.Timeout | null } | null = null;
  #stopped = false;

  constructor(private readonly settings: () => DeadlineSettings, private readonly onBreach: (breach: DeadlineBreach) => void) {}

  /** Watches `socket` from now on (the TLS socket replaces the plaintext one after STARTTLS). */
  watch(socket: Socket): void {
    if (socket === this.#socket || this.#stopped) return;
    this.#socket?.off('data', this.#onData);
    this.#clearLine();
    this.#socket = socket;
    // Added after smtp-server has piped the socket into its parser, this listener only observes.
    socket.on('data', this.#onData);
  }

  /** The 354 went out: from now on the data rate counts, not lines. */
  dataStarted(): void {
    if (this.#stopped) return;
    this.#clearLine();
    this.#data = { started: Date.now(), bytes: 0, timer: null };
    this.#armData();
  }

  /** The end of data was read. */
  dataEnded(): void {
    if (this.#data?.timer) clearTimeout(this.#data.timer);
    this.#data = null;
  }

  stop(): void {
    this.#stopped = true;
    this.#socket?.off('data', this.#onData);
    this.#clearLine();
    this.dataEnded();
  }

  #feed(chunk: Buffer): void {
    if (this.#stopped || chunk.length === 0) return;
    if (this.#data) {
      this.#data.bytes += chunk.length;
      return;
    }
    if (chunk[chunk.length - 1] === LF) return this.#clearLine();
    // A line ended inside this chunk and the next one started: its clock starts now.
    if (chunk.includes(LF)) this.#clearLine();
    if (this.#lineTimer) return;
    const { commandDeadline } = this.settings();
    if (commandDeadline <= 0) return;
    this.#lineTimer = setTimeout(() => this.#breach('command'), commandDeadline);
    this.#lineTimer.unref();
  }

  #armData(): void {
    const data = this.#data;
    if (!data) return;
    const { commandDeadline, minDataRate, commandTimeout } = this.settings();
    if (minDataRate <= 0) return;
    const grace = commandDeadline > 0 ? commandDeadline : commandTimeout;
    const allowed = grace + (data.bytes * 1000) / minDataRate;
    const left = data.started + allowed - Date.now();
    if (left <= 0) return this.#breach('data');
    data.timer = setTimeout(() => this.#armData(), Math.ceil(left));
    data.timer.unref();
  }

  #clearLine(): void {
    if (this.#lineTimer) clearTimeout(this.#lineTimer);
    this.#lineTimer = null;
  }

  #breach(breach: DeadlineBreach): void {
    if (this.#stopped) return;
    this.stop();
    this.onBreach(breach);
  }
}
