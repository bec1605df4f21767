/*
 * The SMTP listeners, on smtp-server: this file is the one adapter between smtp-server's
 * callbacks and Ichidan's policy, queue and engines.
 *
 * Per listener: TLS mode (STARTTLS, implicit, none; certificates from ingress-certificates.ts), a
 * PROXY protocol header from a load balancer (ingress-proxy-door.ts), AUTH PLAIN/LOGIN only on submission and only
 * once TLS is up, SIZE / PIPELINING / 8BITMIME / SMTPUTF8 / ENHANCEDSTATUSCODES / DSN advertised,
 * no reverse lookup unless a resolver is configured for it, the greeting delay, the client limit.
 * Per connection (ingress-connections.ts): the per-address limits at connect and MAIL FROM, the
 * deadlines bytes do not reset, the AUTH penalties (ingress-auth.ts); the envelope's bytes
 * (ingress-envelope.ts).
 * Per transaction: the config snapshot (config, policy, engines) current at MAIL FROM is kept to
 * the end of that transaction; its DATA goes through the accept step (queue/accept/accept-step.ts),
 * which this adapter gives the envelope, the Received field (ingress-received.ts) and the DATA
 * deadline (limits.dataTimeout: 421 4.4.2 and the connection closed), and for outbound mail the
 * DKIM keys it is signed with (ingress-dkim.ts).
 * Cluster: while the node is drained, new connections get 421 4.3.2 and new transactions 451
 * 4.3.2 (those under way finish); a transaction a peer signed as a transfer takes its tenants and
 * DSN parameters from the signature, keeps the original queue id and skips the scan
 * (ingress-transfer.ts says who counts as a peer).
 * Steering by DNS (admission.dns.enabled): an mx listener also takes the responder's pairing
 * addresses on its port, and tells the responder each connection's local and remote address
 * (admission/admission-dns.ts pairs resolvers with the MTAs that connect).
 * Metrics and log: each connection, refusal, MAIL FROM and message is told to `events`
 * (mta-metrics-traffic.ts); the log has a line at connect (once let in; a refusal is at debug
 * level), at TLS (protocol and cipher) and at disconnect, each with the session id (smtp-server's),
 * which the accept step's lines carry too.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { SMTPServerAuthentication, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import { alreadyQueued, REPLIES, replyLine, replyText, toSmtpError, type SmtpReply } from '../../base/base-reply.js';
import type { TransferMessage } from '../../queue/cluster/cluster-transfer.js';
import type { Queue, NewRecipient } from '../../queue/index.js';
import { acceptMessage, type AcceptInput } from '../../queue/accept/accept-step.js';
import type { ListenerConfig, Config } from '../mta-config-schema.js';
import type { Snapshot } from '../mta-snapshot.js';
import type { AuthGuard } from './ingress-auth.js';
import type { Admission, DoorDecision } from '../admission/admission.js';
import type { LearnInput } from '../admission/admission-learn.js';
import { ConnectionTable, WatchedServer } from './ingress-connections.js';
import { clearMailParameters, mailFromRefusal, rcptToRefusal } from './ingress-envelope.js';
import { buildReceived } from './ingress-received.js';
import { suppressedAtRcpt } from './ingress-suppression.js';
import { dkimSigningFor } from './ingress-dkim.js';
import { checkTransfer, strayRecipientParameter, transferPlacement, transferRecipient } from './ingress-transfer.js';
import type { TlsMaterial } from './ingress-tls.js';
import { ProxyDoor } from './ingress-proxy-door.js';
import { KnownQueue, type KnownQueueStatus, type ReuseportAddon, type Steering, type Surge } from './ingress-known-queue.js';
import type { IngressEvents } from '../mta-metrics-traffic.js';

/** What a transaction borrows for its whole life: the snapshot current at its MAIL FROM. */
interface Transaction {
  snapshot: Snapshot;
  recipients: Map<string, NewRecipient>;
  /** Set: a cluster peer is handing this message over (ingress-transfer.ts). */
  transfer: TransferMessage | null;
}

type Callback = (err?: Error | null) => void;

export interface ListenerDeps {
  snapshot: () => Snapshot;
  queue: Queue;
  tls: TlsMaterial;
  log: Logger;
  auth: AuthGuard;
  /** True while the node is drained: new connections get 421 4.3.2, new transactions 451 4.3.2. */
  draining: () => boolean;
  /** Known senders first under pressure (mta/admission/): the door, MAIL FROM, RCPT, scan priority. */
  admission: Admission;
  /** Each message's outcome, for the known senders to learn from (not a transfer's). */
  learn: (input: LearnInput) => void;
  /** The DNS responder (admission.dns.enabled): its pairing addresses, and each connection told to it. */
  dns?: () => PairingListener | null;
  /** Told of connections, transactions and messages (the metrics). */
  events?: IngressEvents;
  /** Known senders' own accept queue (ingress-known-queue.ts): the addon and the networks it steers, or why not. */
  knownQueue?: { addon: ReuseportAddon; steering: () => Steering } | null;
}

/** What an mx listener does for the DNS responder's resolver pairing (admission/admission-dns.ts). */
export interface PairingListener {
  /** Addresses the listener of this name also takes, on its own port. */
  pairingAddresses(listener: string): string[];
  connected(localAddress: string, remoteAddress: string): void;
}

export class Listener {
  readonly server: WatchedServer;
  readonly #tx = new WeakMap<SMTPServerSession, Transaction>();
  readonly #connections: ConnectionTable;
  readonly #inFlight = new Set<Promise<unknown>>();
  /** The admission's decision for each connection, from its arrival to its greeting (or refusal). */
  readonly #door = new Map<string, DoorDecision>();
  /** Aborted when a session closes: a message still waiting for a scan slot stops waiting. */
  readonly #gone = new Map<string, AbortController>();
  /** Behind a load balancer: the PROXY protocol settings in force (ingress-proxy-door.ts). */
  #proxyProtocol: ListenerConfig['proxyProtocol'];
  /** The DNS responder's pairing addresses, taken by an mx listener besides its own. */
  readonly #pairing: Server[] = [];
  /** Sessions let in at connect (their disconnect is logged; a refused one's is not). */
  readonly #greeted = new Set<string>();
  /** Known senders' own accept queue, when the kernel steers them to one. */
  #known: KnownQueue | null = null;

  constructor(readonly spec: ListenerConfig, private readonly deps: ListenerDeps) {
    const rt = deps.snapshot();
    const cfg = rt.config;
    const submission = spec.role === 'submission';
    this.#connections = new ConnectionTable(spec.name, deps.snapshot, deps.log);
    const options: SMTPServerOptions & { greetingDelay: (c: { id: string; remoteAddress: string }) => number } = {
      name: cfg.hostname,
      banner: 'Ichidan',
      secure: spec.tls === 'implicit',
      key: deps.tls.key,
      cert: deps.tls.cert,
      hideSTARTTLS: spec.tls === 'none',
      disabledCommands: submission ? (spec.tls === 'none' ? ['STARTTLS'] : []) : (spec.tls === 'none' ? ['AUTH', 'STARTTLS'] : ['AUTH']),
      authMethods: ['PLAIN', 'LOGIN'],
      allowInsecureAuth: false,
      authOptional: true,
      size: cfg.limits.maxMessageSize,
      hideENHANCEDSTATUSCODES: false,
      hideDSN: false,
      disableReverseLookup: !rt.reverse,
      resolver: rt.reverse ? { reverse: (ip: string, cb: (err: Error | null, names?: string[]) => void) => { rt.reverse!(ip).then((n) => cb(null, n), (e) => cb(e)); } } : undefined,
      socketTimeout: cfg.limits.commandTimeout,
      closeTimeout: 30_000,
      maxClients: spec.maxClients,
      // The admission decided as the connection arrived (server.early, below): its wait before the
      // greeting (an unknown sender's, while busy).
      greetingDelay: (c) => {
        const decision = this.#door.get(c.id) ?? this.#decide(c.id, c.remoteAddress, this.server.connections.size - 1);
        return decision.action === 'refuse' ? 0 : Math.max(spec.greetingDelay, decision.delayMs);
      },
      logger: false,
      // AUTH is neither advertised nor accepted until the session is encrypted (RFC 4954 section 4).
      onConnect: (session, cb) => {
        deps.events?.connection(spec.name);
        // Refused connections log at debug only: a flood turned away must not flood the log.
        const refuse = (r: SmtpReply) => {
          deps.events?.connectionRefused(spec.name, r);
          deps.log.debug({ listener: spec.name, session: session.id, client: session.remoteAddress, reply: `${r.code} ${r.enhanced}` }, 'connection refused');
          cb(toSmtpError(r));
        };
        if (deps.draining()) return refuse(REPLIES.draining);
        const door = this.#door.get(session.id);
        this.#door.delete(session.id);
        if (door?.action === 'refuse') return refuse(door.reply);
        const refusal = this.#connections.admit(session);
        if (refusal) return refuse(refusal);
        if (submission && !session.secure) (session as SMTPServerSession & { disabledCommands?: string[] }).disabledCommands = ['AUTH'];
        this.#greeted.add(session.id);
        deps.log.info({ listener: spec.name, session: session.id, client: session.remoteAddress }, 'connect');
        cb();
      },
      onSecure: (socket, session, cb) => {
        const tls = socket as Socket & { getProtocol?: () => string | null; getCipher?: () => { name: string } | undefined };
        deps.log.info({ listener: spec.name, session: session.id, protocol: tls.getProtocol?.() ?? null, cipher: tls.getCipher?.()?.name ?? null }, 'tls');
        this.#connections.secured(session.id, socket as Socket);
        if (submission) (session as SMTPServerSession & { disabledCommands?: string[] }).disabledCommands = [];
        cb();
      },
      onAuth: (auth, session, cb) => this.#onAuth(auth, session, cb),
      onMailFrom: (address, session, cb) => this.#onMailFrom(address.address, address.args, mailFromRefusal(address), Number((address.args || {}).SIZE ?? 0) || 0, session, cb),
      onRcptTo: (address, session, cb) => this.#onRcptTo(address.address, address.args, rcptToRefusal(address, session), (address as { dsn?: { notify?: string[]; orcpt?: string } }).dsn, session, cb),
      onData: (stream, session, cb) => this.#track(this.#onData(stream, session, cb as never)),
      onClose: (session) => this.#closed(session),
    };
    this.server = new WatchedServer(options);
    this.server.onConnection = (connection, socket) => {
      this.#connections.watch(connection, socket);
      this.#toldToDns(connection, socket);
    };
    // The admission's refusals are given before smtp-server builds a session (or looks up the
    // client's name): under a flood the door must cost next to nothing.
    this.server.early = (id, address) => {
      if (deps.draining()) return null;
      const decision = this.#decide(id, address, this.server.connections.size);
      return decision.action === 'refuse' ? decision.reply : null;
    };
    this.server.refusedEarly = (id) => {
      this.#door.delete(id);
      deps.admission.closed(id);
    };
    this.server.on('error', (err) => deps.log.warn({ err, listener: spec.name }, 'listener error'));
    this.#proxyProtocol = spec.proxyProtocol;
    this.server.door = new ProxyDoor(spec.name, () => deps.snapshot().config.hostname, () => this.#proxyProtocol, deps.log);
  }

  async listen(): Promise<{ address: string; port: number }> {
    const own = await this.#openKnownQueue();
    const where = await new Promise<{ address: string; port: number }>((resolve, reject) => {
      this.server.once('error', reject);
      const done = () => {
        this.server.removeListener('error', reject);
        const a = this.server.server.address();
        resolve(typeof a === 'object' && a ? { address: a.address, port: a.port } : { address: this.spec.address, port: this.spec.port });
      };
      if (own !== null) this.server.listen({ fd: own, backlog: this.spec.backlog }, done);
      else this.server.listen(this.spec.port, this.spec.address, this.spec.backlog, done);
    });
    await this.#listenForPairing(where.port);
    return where;
  }

  /** Known senders' own accept queue: the general queue's descriptor for smtp-server, or null to listen the ordinary way (said why). */
  async #openKnownQueue(): Promise<number | null> {
    const known = this.deps.knownQueue;
    if (!known) return null;
    try {
      const { queue, generalFd } = await KnownQueue.open(known.addon, this.spec, known.steering(), (socket) => this.server.server.emit('connection', socket));
      queue.server.on('error', (err) => this.deps.log.warn({ err, listener: this.spec.name }, 'known queue error'));
      this.#known = queue;
      return generalFd;
    } catch (err) {
      this.deps.log.warn({ err, listener: this.spec.name }, 'known senders share the accept queue: the kernel refused their own');
      return null;
    }
  }

  /** The known queue's networks or the refusing changed (the daemon's steering): the kernel gets the new program. */
  steerKnown(steering: Steering): void {
    try {
      this.#known?.steer(steering);
    } catch (err) {
      this.deps.log.warn({ err, listener: this.spec.name }, 'known queue: the kernel refused the new networks (the last ones stay in force)');
    }
  }

  knownQueue(): KnownQueueStatus | null {
    return this.#known?.status() ?? null;
  }

  /** A flood the known queue's guard met at the socket since the last call (taken in now), or null. */
  takeSurge(): Surge | null {
    return this.#known?.takeSurge() ?? null;
  }

  /**
   * An mx listener also takes the DNS responder's pairing addresses on its port: their connections
   * go to the same smtp-server, as if they had arrived on the listener's own address.
   */
  async #listenForPairing(port: number): Promise<void> {
    const addresses = this.spec.role === 'mx' ? this.deps.dns?.()?.pairingAddresses(this.spec.name) ?? [] : [];
    for (const address of addresses) {
      const server = createServer((socket) => this.server.server.emit('connection', socket));
      server.on('error', (err) => this.deps.log.warn({ err, listener: this.spec.name, address }, 'pairing address error'));
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(port, address, this.spec.backlog, () => { server.off('error', reject); resolve(); });
        });
      } catch (err) {
        throw new Error(`admission.dns.pairingAddresses: listener ${this.spec.name} cannot listen on ${address}:${port}`, { cause: err });
      }
      this.#pairing.push(server);
      this.deps.log.info({ listener: this.spec.name, address, port }, 'listening on a pairing address');
    }
  }

  /** Where the pairing addresses this listener took are bound (the admission's accept-queue signal counts them too). */
  pairingEndpoints(): Array<{ address: string; port: number }> {
    return this.#pairing.map((p) => p.address()).filter((a) => typeof a === 'object' && a !== null).map((a) => ({ address: a.address, port: a.port }));
  }

  /**
   * The DNS responder learns each connection's local and remote address (resolver pairing); the
   * remote one as smtp-server gives the session, i.e. the client's behind a PROXY protocol balancer.
   */
  #toldToDns(connection: object, socket: Socket): void {
    const remote = (connection as { remoteAddress?: string }).remoteAddress || socket.remoteAddress;
    if (this.spec.role !== 'mx' || !socket.localAddress || !remote) return;
    this.deps.dns?.()?.connected(socket.localAddress, remote);
  }

  /** A reloaded config: the SIZE limit, the idle timeout, the greeting name and the PROXY settings apply to new commands and connections. */
  apply(config: Config): void {
    this.#proxyProtocol = config.listeners.find((l) => l.name === this.spec.name)?.proxyProtocol;
    const options = this.server.options as SMTPServerOptions;
    options.size = config.limits.maxMessageSize;
    options.socketTimeout = config.limits.commandTimeout;
    options.name = config.hostname;
  }

  /** Stops accepting, lets open transactions finish (up to closeTimeout), then resolves. */
  async close(): Promise<void> {
    for (const p of this.#pairing.splice(0)) p.close();
    this.#known?.close();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await Promise.allSettled([...this.#inFlight]);
  }

  #track<T>(p: Promise<T>): void {
    this.#inFlight.add(p);
    p.finally(() => this.#inFlight.delete(p)).catch(() => undefined);
  }

  /** The admission's decision for a new connection (`open`: the listener's sessions without it), kept until its greeting. */
  #decide(id: string, address: string, open: number): DoorDecision {
    const decision = this.deps.admission.connect(id, address, this.spec, open);
    this.#door.set(id, decision);
    return decision;
  }

  #client(session: SMTPServerSession) {
    return { address: session.remoteAddress, authUser: typeof session.user === 'string' ? session.user : null, role: this.spec.role };
  }

  #onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, cb: (err: Error | null, res?: { user: string }) => void): void {
    const { config } = this.deps.snapshot();
    const where = { listener: this.spec.name, session: session.id, client: session.remoteAddress, user: auth.username };
    this.deps.auth.authenticate({
      username: auth.username ?? '', password: auth.password ?? '', address: session.remoteAddress,
      sessionFailures: this.#connections.authFailures(session.id), exempt: this.#connections.exempt(session.remoteAddress),
    }, config).then((outcome) => {
      if (outcome.ok) {
        this.deps.log.info(where, 'authenticated');
        this.deps.admission.authenticated(session.id, outcome.user);
        return this.#connections.answerLater(session.id, outcome.delayMs, () => cb(null, { user: outcome.user }));
      }
      if (outcome.why === 'invalid' || outcome.why === 'blocked') this.#connections.authFailed(session.id);
      this.deps.log.info({ ...where, reason: outcome.why, failures: this.#connections.authFailures(session.id), delayMs: outcome.delayMs }, 'authentication failed');
      this.#connections.answerLater(session.id, outcome.delayMs, () => cb(toSmtpError(outcome.reply)));
    }, (err) => {
      this.deps.log.error({ err }, 'password check failed');
      cb(toSmtpError(REPLIES.authUnavailable));
    });
  }

  #closed(session: SMTPServerSession): void {
    if (this.#greeted.delete(session.id)) this.deps.log.info({ listener: this.spec.name, session: session.id, client: session.remoteAddress }, 'disconnect');
    this.#endTransaction(session);
    this.#door.delete(session.id);
    this.#gone.get(session.id)?.abort(new Error('client gone'));
    this.#gone.delete(session.id);
    this.deps.admission.closed(session.id);
    this.#connections.closed(session.id);
  }

  #onMailFrom(sender: string, args: Record<string, unknown> | false | undefined, badAddress: SmtpReply | null, declaredSize: number, session: SMTPServerSession, cb: Callback): void {
    const snapshot = this.deps.snapshot();
    const transfer = checkTransfer(args, sender, session.remoteAddress, snapshot.config, Date.now());
    if (transfer.kind === 'refused') {
      this.deps.log.warn({ listener: this.spec.name, client: session.remoteAddress, reason: transfer.why }, 'cluster transfer refused');
    }
    const refusal = (this.deps.draining() ? REPLIES.drainingMail : null)
      ?? this.#connections.mail(session)
      // Unknown networks' MAIL FROM rate while busy; the queue's intake paused for everyone.
      ?? this.deps.admission.mail(session.id)
      ?? badAddress
      ?? (transfer.kind === 'refused' ? REPLIES.transferRefused : null)
      // A transfer's sender was judged where the message was first accepted.
      ?? (transfer.kind === 'transfer' ? null : snapshot.policy.checkSender(this.#client(session)))
      // Below queue.minFree new mail waits (RFC 5321 4.2.2: 452), so the queue keeps room for outcomes.
      ?? (this.deps.queue.lowOnSpace(declaredSize) ? REPLIES.storageFull : null);
    this.deps.events?.transaction(this.spec.name);
    if (refusal) {
      this.deps.events?.transactionRefused(this.spec.name, refusal);
      clearMailParameters(session.envelope);
      return cb(toSmtpError(refusal));
    }
    this.#endTransaction(session);
    snapshot.retain();
    this.#tx.set(session, { snapshot, recipients: new Map(), transfer: transfer.kind === 'transfer' ? transfer.transfer : null });
    cb();
  }

  /** The transaction of `session` (if any) is over: its snapshot is given back. */
  #endTransaction(session: SMTPServerSession): void {
    const tx = this.#tx.get(session);
    if (!tx) return;
    this.#tx.delete(session);
    tx.snapshot.release();
  }

  #onRcptTo(address: string, args: Record<string, unknown> | false | undefined, badAddress: SmtpReply | null, dsn: { notify?: string[]; orcpt?: string } | undefined, session: SMTPServerSession, cb: Callback): void {
    const tx = this.#tx.get(session);
    if (!tx) return cb(toSmtpError(REPLIES.needMail));
    if (badAddress) return cb(toSmtpError(badAddress));
    if (tx.recipients.size >= tx.snapshot.config.limits.maxRecipients) return cb(toSmtpError(REPLIES.tooManyRecipients));
    if (tx.transfer) {
      // The peer judged the relay when it accepted the message: the signed tenant and DSN parameters stand.
      const r = transferRecipient(args, tx.transfer, address, tx.snapshot.config);
      if (!r) {
        this.deps.log.warn({ listener: this.spec.name, client: session.remoteAddress, rcpt: address }, 'cluster transfer recipient refused');
        return cb(toSmtpError(REPLIES.transferRefused));
      }
      tx.recipients.set(r.address, r);
      return cb();
    }
    if (strayRecipientParameter(args)) return cb(toSmtpError(REPLIES.transferRefused));
    const deferred = this.deps.admission.rcpt(session.id);
    if (deferred) return cb(toSmtpError(deferred));
    const decision = tx.snapshot.policy.checkRecipient(address, this.#client(session));
    if (!decision.ok) {
      this.deps.log.info({ listener: this.spec.name, client: session.remoteAddress, rcpt: address, reply: decision.reply.text }, 'recipient refused');
      return cb(toSmtpError(decision.reply));
    }
    const suppressed = suppressedAtRcpt(this.deps.queue, tx.snapshot.policy, decision, this.#client(session), this.deps.log);
    if (suppressed) return cb(toSmtpError(suppressed));
    this.#whenKnown(address, decision, tx, session, cb, () => {
      // Local parts are case-sensitive (RFC 5321 2.4): only the domain is normalised in the key.
      tx.recipients.set(decision.address, {
        tenant: decision.tenant, address: decision.address, domain: decision.domain,
        orcpt: dsn?.orcpt ?? null, notify: dsn?.notify?.join(',') ?? null,
      });
      cb();
    });
  }

  /**
   * Recipient validation (ingress-recipients.ts): `accept` runs once the recipient is known to the
   * hosted domain; an unknown one gets 550 5.1.1 now, never a bounce later. The bare <postmaster> is
   * never checked (RFC 5321 4.5.1).
   */
  #whenKnown(given: string, decision: { address: string; domain: string }, tx: Transaction, session: SMTPServerSession, cb: Callback, accept: () => void): void {
    if (given.toLowerCase() === 'postmaster' || !tx.snapshot.recipients.active) return accept();
    tx.snapshot.recipients.check(decision.address, decision.domain).then((refusal) => {
      if (refusal) {
        this.deps.log.info({ listener: this.spec.name, client: session.remoteAddress, rcpt: decision.address, reply: refusal.text }, 'recipient refused');
        return cb(toSmtpError(refusal));
      }
      // The transaction may have ended (RSET, a new MAIL, a closed connection) while the check ran.
      if (this.#tx.get(session) !== tx) return cb(toSmtpError(REPLIES.needMail));
      accept();
    }, (err) => {
      this.deps.log.error({ err, rcpt: decision.address }, 'recipient check failed');
      cb(toSmtpError(REPLIES.localError));
    });
  }

  async #onData(stream: Readable, session: SMTPServerSession, cb: (err: Error | null, message?: string) => void): Promise<void> {
    const tx = this.#tx.get(session);
    this.#tx.delete(session);
    if (!tx) {
      stream.resume();
      return cb(toSmtpError(REPLIES.localError));
    }
    try {
      const input = this.#acceptInput(stream, session, tx);
      if (tx.transfer) {
        const place = transferPlacement(this.deps.queue.store, tx.transfer.id, input.envelope.recipients);
        if (!place) {
          stream.resume();
          await new Promise((resolve) => stream.once('end', resolve));
          this.deps.log.info({ qid: tx.transfer.id, peer: tx.transfer.from }, 'cluster transfer already queued here');
          return cb(null, replyText(alreadyQueued(tx.transfer.id)));
        }
        input.envelope.recipients = place.recipients;
        input.transfer = { queueId: place.queueId };
        if (!place.queueId) this.deps.log.warn({ qid: tx.transfer.id, peer: tx.transfer.from }, 'cluster transfer: its id is already queued here with other recipients; these go under a new id');
      }
      const result = await acceptMessage(input, this.deps.queue, this.deps.log.child({ session: session.id }));
      const { reply } = result;
      const outcome = result.kind === 'queued' ? (result.quarantined ? 'quarantined' : 'accepted') : result.kind;
      this.deps.events?.message(this.spec.name, input.envelope.recipients[0]?.tenant ?? null, outcome, result.kind === 'queued' ? null : reply, 'scan' in result && !!result.scan);
      if (!tx.transfer) this.deps.learn({ address: session.remoteAddress, authUser: this.#client(session).authUser, result });
      if (reply.code < 400) cb(null, replyText(reply));
      else cb(toSmtpError(reply));
    } finally {
      tx.snapshot.release();
    }
  }

  /** The transaction as the accept step takes it: the envelope, the Received field, the DATA deadline. */
  #acceptInput(stream: Readable, session: SMTPServerSession, tx: Transaction): AcceptInput & { mode: 'queue' } {
    const { config } = tx.snapshot;
    const env = session.envelope as typeof session.envelope & { bodyType?: string; smtpUtf8?: boolean; dsn?: { ret?: string; envid?: string } };
    const recipients = [...tx.recipients.values()];
    return {
      mode: 'queue',
      stream,
      envelope: {
        sender: env.mailFrom ? env.mailFrom.address : '', recipients,
        ret: tx.transfer ? tx.transfer.ret : env.dsn?.ret ?? null, envid: tx.transfer ? tx.transfer.envid : env.dsn?.envid ?? null,
        smtputf8: !!env.smtpUtf8 || !!tx.transfer?.smtputf8, body8bit: env.bodyType === '8bitmime',
        client: session.remoteAddress, helo: session.hostNameAppearsAs ? String(session.hostNameAppearsAs) : '',
        authUser: this.#client(session).authUser, listener: this.spec.name,
      },
      clientName: session.clientHostname && !session.clientHostname.startsWith('[') ? session.clientHostname : null,
      snapshot: tx.snapshot,
      scanSlot: {
        slots: this.deps.admission.slots, priority: this.deps.admission.priority(session.id), gone: this.#goneSignal(session.id),
        deferred: this.#beforeScan(session.id),
      },
      limits: config.limits,
      hostname: config.hostname,
      // Outbound mail of a tenant with DKIM keys (ingress-dkim.ts); a transfer was signed where first accepted.
      dkim: tx.transfer ? undefined : dkimSigningFor(tx.snapshot, this.#client(session)),
      trace: (queueId) => buildReceived({
        session, hostname: config.hostname, queueId, listener: this.spec.name,
        recipient: recipients.length === 1 ? recipients[0].address : null, now: new Date(),
      }),
      receiving: () => {
        const timer = setTimeout(() => {
          stream.destroy(new Error('DATA timeout'));
          this.#dropConnection(session.id, REPLIES.dataTimeout);
        }, config.limits.dataTimeout);
        this.#connections.dataStarted(session.id, stream);
        return () => {
          clearTimeout(timer);
          this.#connections.dataEnded(session.id);
        };
      },
    };
  }

  /**
   * The admission's look at one message before its scan, asked again after a wait for a scan slot
   * (the level may have risen meanwhile); its decision is counted once.
   */
  #beforeScan(sessionId: string): () => SmtpReply | null {
    let counted = false;
    return () => {
      const d = this.deps.admission.beforeScan(sessionId, counted);
      counted = d.counted;
      return d.reply;
    };
  }

  /** The signal aborted when the session closes. */
  #goneSignal(sessionId: string): AbortSignal {
    let c = this.#gone.get(sessionId);
    if (!c) this.#gone.set(sessionId, c = new AbortController());
    return c.signal;
  }

  /** Ends a session whose DATA phase ran past limits.dataTimeout. */
  #dropConnection(sessionId: string, r: SmtpReply): void {
    const connections = (this.server as unknown as { connections: Set<{ id: string; send: (c: number, t: string) => void; close: () => void }> }).connections;
    for (const c of connections) {
      if (c.id !== sessionId) continue;
      this.deps.log.info({ listener: this.spec.name, session: sessionId }, 'DATA phase timed out');
      c.send(r.code, replyText(r));
      c.close();
    }
  }
}
