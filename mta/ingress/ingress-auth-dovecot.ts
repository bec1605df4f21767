/*
 * A client of Dovecot's authentication protocol (version 1, the auth service's client socket that
 * Postfix's smtpd_sasl_type = dovecot also uses), so AUTH checks passwords against the provider's
 * own user database (`auth.backend: { type: dovecot, socket }`).
 *
 * The dialogue, one line each way per step, fields split by TAB:
 *   C: VERSION 1 2          C: CPID <pid>
 *   S: VERSION 1 <minor>    S: MECH <name> …  S: SPID / CUID / COOKIE …   S: DONE
 *   C: AUTH <id> PLAIN service=smtp nologin no-penalty secured rip=<client> resp=<base64 of \0user\0password>
 *   S: OK <id> user=<name> …  |  FAIL <id> [reason=<text>] [temp] …
 * One connection carries any number of requests at once, told apart by their ids; it is opened at
 * the first request and again after it ends. smtp-server has already collected the user name and
 * the password of either PLAIN or LOGIN, so Dovecot is always asked with PLAIN. `no-penalty`: the
 * AUTH guard (ingress-auth.ts) already delays and blocks guessers by address and account; Dovecot's
 * own penalty by address (2 s doubling to 15 s) on top would turn wrong passwords into timeouts.
 * Gives: `authenticate()` → { ok, user } (the name Dovecot returns), { ok: false, reason } for a
 * wrong password or unknown user; it rejects (the caller answers 454 4.7.0) when the answer is
 * temporary (`temp`), late (`timeout`), or the socket cannot be reached, closes mid-request or
 * says something malformed (the connection is then dropped and every request on it rejected).
 * Returns null when `maxPending` requests already wait (the caller answers 454 too).
 * A name or password holding NUL, TAB or LF never leaves: it cannot be a Dovecot account.
 * Network: the unix socket (or host:port) given. Settings: auth.backend.
 */
import { connect, type Socket } from 'node:net';

export type DovecotAnswer = { ok: true; user: string } | { ok: false; reason: string | null };

export interface DovecotRequest {
  username: string;
  password: string;
  /** The client's address (Dovecot logs it and applies its own penalties by it). */
  address: string;
}

interface Pending {
  resolve: (a: DovecotAnswer) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** Longest line taken from Dovecot; a longer one is a protocol error. */
const MAX_LINE = 65_536;

export class DovecotAuthError extends Error {
  readonly code = 'ICHIDAN_ERR_DOVECOT_AUTH';
}

export class DovecotAuthClient {
  #socket: Socket | null = null;
  #ready: Promise<void> | null = null;
  #buffer = '';
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  /** Lines of the server's handshake, up to DONE. */
  #handshake: string[] | null = null;
  #handshakeDone: ((err?: Error) => void) | null = null;

  constructor(readonly socketPath: string, private readonly opts: { timeout: number; maxPending: number }) {}

  get pending(): number {
    return this.#pending.size;
  }

  get timeout(): number {
    return this.opts.timeout;
  }

  get maxPending(): number {
    return this.opts.maxPending;
  }

  authenticate(r: DovecotRequest): Promise<DovecotAnswer> | null {
    if (this.#pending.size >= this.opts.maxPending) return null;
    if (/[\0\t\n\r]/.test(r.username) || /[\0\t\n\r]/.test(r.password)) return Promise.resolve({ ok: false, reason: 'name or password with control characters' });
    const id = this.#nextId++;
    return new Promise<DovecotAnswer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new DovecotAuthError(`no answer from Dovecot within ${this.opts.timeout} ms`));
      }, this.opts.timeout);
      this.#pending.set(id, { resolve, reject, timer });
      this.#connect().then(() => {
        if (!this.#pending.has(id)) return;
        const resp = Buffer.from(`\0${r.username}\0${r.password}`).toString('base64');
        const rip = /^[0-9a-f:.]+$/i.test(r.address) ? `\trip=${r.address}` : '';
        this.#socket!.write(`AUTH\t${id}\tPLAIN\tservice=smtp\tnologin\tno-penalty\tsecured${rip}\tresp=${resp}\n`);
      }, (err: Error) => this.#settle(id, (p) => p.reject(err)));
    });
  }

  close(): void {
    this.#drop(new DovecotAuthError('the Dovecot auth client was closed'));
  }

  #connect(): Promise<void> {
    if (this.#ready) return this.#ready;
    const socket = connect(this.socketPath.startsWith('/') ? { path: this.socketPath } : hostPort(this.socketPath));
    this.#socket = socket;
    this.#buffer = '';
    this.#handshake = [];
    this.#ready = new Promise<void>((resolve, reject) => {
      this.#handshakeDone = (err) => (err ? reject(err) : resolve());
    });
    // A handshake that fails is reported to the requests waiting on it, never left unhandled.
    this.#ready.catch(() => undefined);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`VERSION\t1\t2\nCPID\t${process.pid}\n`));
    socket.on('data', (d: string) => this.#onData(socket, d));
    socket.on('error', (err) => this.#drop(new DovecotAuthError(`Dovecot auth socket ${this.socketPath}: ${err.message}`, { cause: err }), socket));
    socket.on('close', () => this.#drop(new DovecotAuthError(`Dovecot auth socket ${this.socketPath} closed`), socket));
    return this.#ready;
  }

  #onData(socket: Socket, data: string): void {
    if (socket !== this.#socket) return;
    this.#buffer += data;
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, nl);
      this.#buffer = this.#buffer.slice(nl + 1);
      const problem = this.#onLine(line);
      if (problem) return this.#drop(new DovecotAuthError(`Dovecot auth protocol: ${problem}`), socket);
    }
    if (this.#buffer.length > MAX_LINE) this.#drop(new DovecotAuthError('Dovecot auth protocol: line too long'), socket);
  }

  /** One line from the server; a string when it breaks the protocol. */
  #onLine(line: string): string | null {
    const [command, ...args] = line.split('\t');
    if (this.#handshake) {
      this.#handshake.push(line);
      if (command === 'VERSION' && args[0] !== '1') return `unsupported version ${args.join('.')}`;
      if (command !== 'DONE') return null;
      const lines = this.#handshake;
      this.#handshake = null;
      if (!lines.some((l) => l.startsWith('VERSION\t1\t'))) return 'no VERSION before DONE';
      if (!lines.some((l) => /^MECH\tPLAIN(\t|$)/.test(l))) return 'Dovecot does not offer PLAIN (auth_mechanisms)';
      this.#handshakeDone?.();
      return null;
    }
    if (command !== 'OK' && command !== 'FAIL' && command !== 'CONT') return `unexpected line "${line.slice(0, 80)}"`;
    const id = Number(args[0]);
    if (!/^\d+$/.test(args[0] ?? '')) return `bad request id in "${line.slice(0, 80)}"`;
    const fields = new Map<string, string>();
    for (const a of args.slice(1)) {
      const eq = a.indexOf('=');
      if (eq < 0) fields.set(a, '');
      else fields.set(a.slice(0, eq), unescape(a.slice(eq + 1)));
    }
    // A late answer to a request given up on: nothing waits for it.
    if (!this.#pending.has(id)) return null;
    if (command === 'CONT') {
      this.#settle(id, (p) => p.reject(new DovecotAuthError('Dovecot asked for more than PLAIN gives')));
      return null;
    }
    if (command === 'OK') {
      const user = fields.get('user');
      this.#settle(id, (p) => p.resolve({ ok: true, user: user || '' }));
      return null;
    }
    if (fields.has('temp')) this.#settle(id, (p) => p.reject(new DovecotAuthError(`Dovecot: temporary failure${fields.get('reason') ? ` (${fields.get('reason')})` : ''}`)));
    else this.#settle(id, (p) => p.resolve({ ok: false, reason: fields.get('reason') ?? null }));
    return null;
  }

  #settle(id: number, how: (p: Pending) => void): void {
    const p = this.#pending.get(id);
    if (!p) return;
    this.#pending.delete(id);
    clearTimeout(p.timer);
    how(p);
  }

  /** The connection is over: every request on it fails; the next request opens a new one. */
  #drop(err: Error, socket: Socket | null = this.#socket): void {
    if (socket !== this.#socket || !socket) return;
    this.#socket = null;
    this.#ready = null;
    this.#handshake = null;
    this.#handshakeDone?.(err);
    this.#handshakeDone = null;
    socket.destroy();
    for (const id of [...this.#pending.keys()]) this.#settle(id, (p) => p.reject(err));
  }
}

/** Dovecot's escaping of values (str_tabescape): \1 → \x01, \t → TAB, \r, \n. */
function unescape(v: string): string {
  return v.replace(/\x01([1trn0])/g, (_, c: string) => ({ '1': '\x01', t: '\t', r: '\r', n: '\n', '0': '\0' })[c]!);
}

function hostPort(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(s)!;
  return { host: m[1] ?? m[2], port: Number(m[3]) };
}

/** The process's Dovecot client, opened for the socket the current config names (a reload may name another). */
export class DovecotClients {
  #client: DovecotAuthClient | null = null;

  client(socket: string, opts: { timeout: number; maxPending: number }): DovecotAuthClient {
    const c = this.#client;
    if (c && c.socketPath === socket && c.timeout === opts.timeout && c.maxPending === opts.maxPending) return c;
    c?.close();
    this.#client = new DovecotAuthClient(socket, opts);
    return this.#client;
  }

  close(): void {
    this.#client?.close();
    this.#client = null;
  }
}
