/*
 * The SMTP listeners, on smtp-server: this file is the one adapter between smtp-server's
 * callbacks and Ichidan's policy, queue and engines.
 *
 * Per listener: TLS mode (STARTTLS, implicit, none), AUTH PLAIN/LOGIN only on submission and only
 * once TLS is up, SIZE / PIPELINING / 8BITMIME / SMTPUTF8 / ENHANCEDSTATUSCODES / DSN advertised,
 * no reverse lookup unless a resolver is configured for it, the greeting delay, the client limit.
 * Per connection (ingress-connections.ts): the per-address limits at connect and MAIL FROM, the
 * deadlines bytes do not reset, the AUTH penalties (ingress-auth.ts); the envelope's bytes
 * (ingress-envelope.ts).
 * Per transaction: the runtime snapshot (config, policy, engines) current at MAIL FROM is kept to
 * the end of that transaction.
 */
import { open } from 'node:fs/promises';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { SMTPServerAuthentication, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import { spoolMessage, type EngineSet, type ScanContext } from '../../engines/index.js';
import { runRecord, scanRecord, type ScanRecord } from '../../engines/engines-records.js';
import type { Queue, NewRecipient, SpoolWriter } from '../../queue/index.js';
import { stripRuleText } from '../../queue/queue-headers.js';
import type { AuthGuard } from './ingress-auth.js';
import type { Config, ListenerConfig } from '../mta-config-schema.js';
import { ConnectionTable, WatchedServer } from './ingress-connections.js';
import { receiveInto } from '../../queue/accept/accept-receive.js';
import { isStorageError } from '../../base/base-errors.js';
import { clearMailParameters, mailFromRefusal, rcptToRefusal } from './ingress-envelope.js';
import type { Policy } from './ingress-policy.js';
import { buildReceived } from './ingress-received.js';
import { REPLIES, toSmtpError, type SmtpReply } from '../../base/base-reply.js';
import type { TlsMaterial } from './ingress-tls.js';

/** What a transaction borrows for its whole life; replaced as a whole on reload. */
export interface Runtime {
  generation: number;
  config: Config;
  policy: Policy;
  engines: EngineSet;
  reverse: ((ip: string) => Promise<string[]>) | null;
  /** A transaction takes a use at MAIL FROM and gives it back when it ends (engines drain on it). */
  retain(): void;
  release(): void;
}

interface Transaction {
  runtime: Runtime;
  recipients: Map<string, NewRecipient>;
}

type Callback = (err?: Error | null) => void;

/**
 * One header field, safe to put in front of a message: its lines (folded with CRLF + white
 * space as the engine folded them) without control characters, no line left blank, every
 * continuation starting with white space — engine output can never start a second field or end
 * the header section.
 */
export function headerField(text: string): string {
  const lines = text.split(/\r\n|\r|\n/).map((l) => l.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, ' ')).filter((l, i) => i === 0 || l.trim() !== '');
  return lines.map((l, i) => (i === 0 || /^[ \t]/.test(l) ? l : ` ${l}`)).join('\r\n') + '\r\n';
}

export interface ListenerDeps {
  runtime: () => Runtime;
  queue: Queue;
  tls: TlsMaterial;
  log: Logger;
  auth: AuthGuard;
}

export class Listener {
  readonly server: WatchedServer;
  readonly #tx = new WeakMap<SMTPServerSession, Transaction>();
  readonly #connections: ConnectionTable;
  readonly #inFlight = new Set<Promise<unknown>>();

  constructor(readonly spec: ListenerConfig, private readonly deps: ListenerDeps) {
    const rt = deps.runtime();
    const cfg = rt.config;
    const submission = spec.role === 'submission';
    this.#connections = new ConnectionTable(spec.name, deps.runtime, deps.log);
    const options: SMTPServerOptions & { greetingDelay: number } = {
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
      greetingDelay: spec.greetingDelay,
      logger: false,
      // AUTH is neither advertised nor accepted until the session is encrypted (RFC 4954 section 4).
      onConnect: (session, cb) => {
        const refusal = this.#connections.admit(session);
        if (refusal) return cb(toSmtpError(refusal));
        if (submission && !session.secure) (session as SMTPServerSession & { disabledCommands?: string[] }).disabledCommands = ['AUTH'];
        cb();
      },
      onSecure: (socket, session, cb) => {
        this.#connections.secured(session.id, socket as Socket);
        if (submission) (session as SMTPServerSession & { disabledCommands?: string[] }).disabledCommands = [];
        cb();
      },
      onAuth: (auth, session, cb) => this.#onAuth(auth, session, cb),
      onMailFrom: (address, session, cb) => this.#onMailFrom(mailFromRefusal(address), Number((address.args || {}).SIZE ?? 0) || 0, session, cb),
      onRcptTo: (address, session, cb) => this.#onRcptTo(address.address, rcptToRefusal(address, session), (address as { dsn?: { notify?: string[]; orcpt?: string } }).dsn, session, cb),
      onData: (stream, session, cb) => this.#track(this.#onData(stream, session, cb as never)),
      onClose: (session) => this.#closed(session),
    };
    this.server = new WatchedServer(options);
    this.server.onConnection = (connection, socket) => this.#connections.watch(connection, socket);
    this.server.on('error', (err) => deps.log.warn({ err, listener: spec.name }, 'listener error'));
  }

  listen(): Promise<{ address: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.spec.port, this.spec.address, () => {
        this.server.removeListener('error', reject);
        const a = this.server.server.address();
        resolve(typeof a === 'object' && a ? { address: a.address, port: a.port } : { address: this.spec.address, port: this.spec.port });
      });
    });
  }

  /** A reloaded config: the SIZE limit, the idle timeout and the greeting name apply to new commands and connections. */
  apply(config: Config): void {
    const options = this.server.options as SMTPServerOptions;
    options.size = config.limits.maxMessageSize;
    options.socketTimeout = config.limits.commandTimeout;
    options.name = config.hostname;
  }

  /** Stops accepting, lets open transactions finish (up to closeTimeout), then resolves. */
  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await Promise.allSettled([...this.#inFlight]);
  }

  #track<T>(p: Promise<T>): void {
    this.#inFlight.add(p);
    p.finally(() => this.#inFlight.delete(p)).catch(() => undefined);
  }

  #client(session: SMTPServerSession) {
    return { address: session.remoteAddress, authUser: typeof session.user === 'string' ? session.user : null, role: this.spec.role };
  }

  #onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, cb: (err: Error | null, res?: { user: string }) => void): void {
    const { config } = this.deps.runtime();
    const where = { listener: this.spec.name, client: session.remoteAddress, user: auth.username };
    this.deps.auth.authenticate({
      username: auth.username ?? '', password: auth.password ?? '', address: session.remoteAddress,
      sessionFailures: this.#connections.authFailures(session.id), exempt: this.#connections.exempt(session.remoteAddress),
    }, config).then((outcome) => {
      if (outcome.ok) {
        this.deps.log.info(where, 'authenticated');
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
    this.#endTransaction(session);
    this.#connections.closed(session.id);
  }

  #onMailFrom(badAddress: SmtpReply | null, declaredSize: number, session: SMTPServerSession, cb: Callback): void {
    const runtime = this.deps.runtime();
    const refusal = this.#connections.mail(session)
      ?? badAddress
      ?? runtime.policy.checkSender(this.#client(session))
      // Below queue.minFree new mail waits (RFC 5321 4.2.2: 452), so the queue keeps room for outcomes.
      ?? (this.deps.queue.lowOnSpace(declaredSize) ? REPLIES.storageFull : null);
    if (refusal) {
      clearMailParameters(session.envelope);
      return cb(toSmtpError(refusal));
    }
    this.#endTransaction(session);
    runtime.retain();
    this.#tx.set(session, { runtime, recipients: new Map() });
    cb();
  }

  /** The transaction of `session` (if any) is over: its snapshot is given back. */
  #endTransaction(session: SMTPServerSession): void {
    const tx = this.#tx.get(session);
    if (!tx) return;
    this.#tx.delete(session);
    tx.runtime.release();
  }

  #onRcptTo(address: string, badAddress: SmtpReply | null, dsn: { notify?: string[]; orcpt?: string } | undefined, session: SMTPServerSession, cb: Callback): void {
    const tx = this.#tx.get(session);
    if (!tx) return cb(toSmtpError({ code: 503, enhanced: '5.5.1', text: 'need MAIL command' }));
    if (badAddress) return cb(toSmtpError(badAddress));
    if (tx.recipients.size >= tx.runtime.config.limits.maxRecipients) return cb(toSmtpError(REPLIES.tooManyRecipients));
    const decision = tx.runtime.policy.checkRecipient(address, this.#client(session));
    if (!decision.ok) {
      this.deps.log.info({ listener: this.spec.name, client: session.remoteAddress, rcpt: address, reply: decision.reply.text }, 'recipient refused');
      return cb(toSmtpError(decision.reply));
    }
    // Local parts are case-sensitive (RFC 5321 2.4): only the domain is normalised in the key.
    tx.recipients.set(decision.address, {
      tenant: decision.tenant, address: decision.address, domain: decision.domain,
      orcpt: dsn?.orcpt ?? null, notify: dsn?.notify?.join(',') ?? null,
    });
    cb();
  }

  async #onData(stream: Readable, session: SMTPServerSession, cb: (err: Error | null, message?: string) => void): Promise<void> {
    const tx = this.#tx.get(session);
    this.#tx.delete(session);
    const fail = (r: SmtpReply) => cb(toSmtpError(r));
    if (!tx) {
      stream.resume();
      return fail(REPLIES.localError);
    }
    try {
      await this.#receive(stream, session, tx, cb);
    } finally {
      tx.runtime.release();
    }
  }

  async #receive(stream: Readable, session: SMTPServerSession, tx: Transaction, cb: (err: Error | null, message?: string) => void): Promise<void> {
    const fail = (r: SmtpReply) => cb(toSmtpError(r));
    const { config } = tx.runtime;
    if (this.deps.queue.lowOnSpace()) {
      stream.resume();
      return fail(REPLIES.storageFull);
    }
    let writer;
    try {
      writer = await this.deps.queue.createWriter();
    } catch (err) {
      this.deps.log.error({ err }, 'cannot create a spool file');
      stream.resume();
      return fail(isStorageError(err) ? REPLIES.storageFull : REPLIES.localError);
    }
    const timer = setTimeout(() => {
      stream.destroy(new Error('DATA timeout'));
      this.#dropConnection(session.id, REPLIES.dataTimeout);
    }, config.limits.dataTimeout);
    this.#connections.dataStarted(session.id, stream);
    let received;
    try {
      received = await receiveInto(stream, writer, config.limits);
    } catch (err) {
      await writer.discard().catch((e) => this.deps.log.error({ err: e, qid: writer.id }, 'could not remove an incomplete message'));
      this.deps.log.info({ listener: this.spec.name, client: session.remoteAddress, err: (err as Error).message }, 'DATA not completed');
      return fail(REPLIES.dataTimeout);
    } finally {
      clearTimeout(timer);
      this.#connections.dataEnded(session.id);
    }
    const refuse = async (r: SmtpReply, why: string) => {
      await writer.discard().catch((err) => this.deps.log.error({ err, qid: writer.id }, 'could not remove a refused message'));
      this.deps.log.info({ listener: this.spec.name, client: session.remoteAddress, bytes: received.bytes, reply: `${r.code} ${r.enhanced}` }, why);
      fail(r);
    };
    if (received.oversized) return refuse(REPLIES.tooBig, 'message too big');
    if (received.bareLineEnding) return refuse(REPLIES.badLineEndings, 'bare CR or LF in message data');
    if (received.nul && !config.limits.allowNul) return refuse(REPLIES.nulInData, 'NUL in message data');
    if (received.writeError) {
      this.deps.log.error({ err: received.writeError, qid: writer.id }, 'spool write failed');
      return refuse(isStorageError(received.writeError) ? REPLIES.storageFull : REPLIES.localError, 'spool write failed');
    }

    try {
      await this.#queueMessage(session, tx, writer, received.bytes, received.structure, cb);
    } catch (err) {
      // Anything unexpected after the data arrived: the client still gets an answer, nothing is kept.
      this.deps.log.error({ err, qid: writer.id }, 'could not process the message');
      await writer.discard().catch(() => undefined);
      fail(isStorageError(err) ? REPLIES.storageFull : REPLIES.localError);
    }
  }

  /** `structure`: the structure limit the message passes (null: none), judged with the engines' verdict. */
  async #queueMessage(session: SMTPServerSession, tx: Transaction, writer: SpoolWriter, bytes: number, structure: string | null, cb: (err: Error | null, message?: string) => void): Promise<void> {
    const { config } = tx.runtime;
    const fail = (r: SmtpReply) => cb(toSmtpError(r));
    const env = session.envelope as typeof session.envelope & { bodyType?: string; smtpUtf8?: boolean; dsn?: { ret?: string; envid?: string } };
    const recipients = [...tx.recipients.values()];
    const sender = env.mailFrom ? env.mailFrom.address : '';
    const context: ScanContext = {
      queueId: writer.id, client: session.remoteAddress, helo: session.hostNameAppearsAs ? String(session.hostNameAppearsAs) : '',
      clientName: session.clientHostname && !session.clientHostname.startsWith('[') ? session.clientHostname : null,
      sender, recipients: recipients.map((r) => r.address), authUser: this.#client(session).authUser,
      tenants: [...new Set(recipients.map((r) => r.tenant))],
    };
    let extraHeaders = '';
    let quarantine: string | null = null;
    let strip: string | null = null;
    let scan: ScanRecord | undefined;
    let markRecorded = () => undefined as void;
    const recorded = new Promise<void>((resolve) => { markRecorded = resolve; });
    try {
      if (tx.runtime.engines.size > 0 || structure !== null) {
        // The engines read the file (or the bytes kept in memory): every chunk must have reached it.
        await writer.flush();
        if (writer.bytes !== bytes) throw Object.assign(new Error(`spool file ${writer.id} holds ${writer.bytes} of ${bytes} bytes`), { code: 'EIO' });
        // A message not kept in memory is read through one handle, which outlives the file's removal
        // (a refused message, or one delivered before a shadow engine has finished).
        const handle = writer.kept ? null : await open(writer.path, 'r');
        let decision;
        try {
          decision = await tx.runtime.engines.scan(spoolMessage(writer.path, bytes, writer.kept, handle ?? undefined), context, AbortSignal.timeout(config.limits.dataTimeout), structure);
        } catch (err) {
          await handle?.close();
          throw err;
        }
        let record: ScanRecord | undefined;
        if (decision.late) {
          // Shadow engines still scanning keep the snapshot (and the handle) until they end; their
          // runs are added once the message's own record is written.
          const { late } = decision;
          const runtime = tx.runtime;
          runtime.retain();
          void recorded.then(() => late).then((runs) => { if (record) this.deps.queue.recordLateRuns(record, runs.map(runRecord)); })
            .catch((err) => this.deps.log.error({ err, qid: writer.id }, 'could not record late scans'))
            .finally(() => {
              runtime.release();
              handle?.close().catch(() => undefined);
            });
        } else {
          await handle?.close();
        }
        const { verdict } = decision;
        scan = record = scanRecord(writer.id, context.tenants!, decision, Date.now(), tx.runtime.generation);
        this.deps.log.info({
          qid: writer.id, listener: this.spec.name, verdict: verdict.action, reason: verdict.reason, ms: scan.ms,
          engines: scan.runs.map((r) => `${r.engine}:${r.status}${r.error ? `(${r.error})` : ''}`).join(' '),
        }, 'scanned');
        if (decision.reply) {
          await writer.discard().catch((err) => this.deps.log.error({ err, qid: writer.id }, 'could not remove a refused message'));
          this.deps.queue.recordScan(scan);
          return fail(decision.reply);
        }
        if (verdict.action === 'quarantine') quarantine = verdict.reason;
        extraHeaders = verdict.headers.map(headerField).join('');
        // The sender's own copies of what Ichidan now says (and anything claiming to be this host's) are left out at delivery.
        const ours = new Set(verdict.headers.map((h) => h.slice(0, h.indexOf(':')).trim().toLowerCase()).filter((n) => n !== 'authentication-results'));
        strip = stripRuleText([...ours, 'x-ichidan-*', `authentication-results=${config.hostname.toLowerCase()}`], verdict.subjectTag);
      }
      const trace = buildReceived({
        session, hostname: config.hostname, queueId: writer.id, listener: this.spec.name,
        recipient: recipients.length === 1 ? recipients[0].address : null, now: new Date(),
      }) + extraHeaders;
      try {
        const id = await this.deps.queue.accept(writer, {
          sender, recipients, ret: env.dsn?.ret ?? null, envid: env.dsn?.envid ?? null,
          smtputf8: !!env.smtpUtf8, body8bit: env.bodyType === '8bitmime',
          client: session.remoteAddress, helo: context.helo, authUser: context.authUser, listener: this.spec.name, trace, quarantine, strip,
        }, bytes, scan);
        this.deps.log.info({ qid: id, listener: this.spec.name, client: session.remoteAddress, sender, recipients: recipients.length, size: bytes, ...(quarantine ? { quarantine } : {}) }, quarantine ? 'quarantined' : 'queued');
        cb(null, `2.0.0 Ok: queued as ${id}`);
      } catch (err) {
        this.deps.log.error({ err, qid: writer.id }, 'could not store the message');
        fail(isStorageError(err) ? REPLIES.storageFull : REPLIES.localError);
      }
    } finally {
      markRecorded();
    }
  }

  /** Ends a session whose DATA phase ran past limits.dataTimeout. */
  #dropConnection(sessionId: string, r: SmtpReply): void {
    const connections = (this.server as unknown as { connections: Set<{ id: string; send: (c: number, t: string) => void; close: () => void }> }).connections;
    for (const c of connections) {
      if (c.id !== sessionId) continue;
      this.deps.log.info({ listener: this.spec.name, session: sessionId }, 'DATA phase timed out');
      c.send(r.code, `${r.enhanced} ${r.text}`);
      c.close();
    }
  }
}
