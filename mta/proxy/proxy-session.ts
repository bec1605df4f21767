/*
 * The transaction steps of one proxied client connection, relayed to its original destination (the
 * address and port a redirected legacy MTA dialled) on the connection and turn its
 * ProxyDestination holds (proxy-destination.ts):
 *   - MAIL FROM goes at once when the connection is open, or when the client waits for its reply
 *     and the site can be named without a recipient (an earlier transaction's, or the one the
 *     address was last seen under in a route), so that the destination's own reply is the
 *     client's; else it is kept for the first RCPT, whose domain names the site. A site named
 *     from the address alone that the first RCPT's route does not name is left (the MAIL FROM
 *     reset there, the connection and turn given back) and the MAIL FROM goes again with that
 *     RCPT at the recipient's site;
 *   - each RCPT is relayed, once the connection is fit for its domain's TLS rule, and its reply
 *     passed back; what the client pipelined (RFC 2920) goes as one group, with the MAIL FROM kept
 *     for it, an RSET when the connection's state is not known to be clean, the RCPTs for the same
 *     domain the client sent right after it (their replies kept until smtp-server hands them over;
 *     a transaction where one never is gets no data relayed), and DATA when the client sent it
 *     right after; what it did not, one by one, up to the first refusal;
 *   - DATA streams through (bounded memory), the destination's final reply goes back; a
 *     destination that fails or stays silent gives the client a 4xx, never a silent loss.
 * The turn is held for one transaction: after its final reply the connection goes back to the pool
 * and the turn to the scheduler, so an idle client holds no share of the site. A transaction that
 * failed toward the destination, or found no turn, leaves the next one to start afresh.
 * Takes: the client's commands and data from the proxy listener (proxy-listener.ts).
 * Gives: a reply to each, and a summary of each transaction for the event sinks.
 * Network: TCP/TLS to the original destination only.
 */
import type { Readable } from 'node:stream';
import { reply } from '../../base/base-reply.js';
import { STATUS } from '../../base/base-outcome.js';
import type { Dispatch } from '../../queue/queue-scheduler.js';
import type { SmtpConnection, Reply } from '../../delivery/smtp/smtp-connection.js';
import { toReply } from '../../delivery/smtp/smtp-wire.js';
import { ProxyDestination, tempfail, type Destination, type ProxyDeps } from './proxy-destination.js';
import { commandLine, domainOf, relayLines } from './proxy-params.js';

/** A recipient the client sent after the one handed over, read ahead (proxy-lookahead.ts). */
export interface Recipient {
  to: string;
  params: string;
}

export interface TransactionSummary {
  sender: string;
  recipients: Array<{ address: string; reply: string }>;
  /** Milliseconds from the client's MAIL FROM to the destination's 354 (null: DATA never started). */
  msTo354: number | null;
  final: string | null;
  bytes: number;
}

/** #relay's answer when a pooled destination session turned out gone: the caller opens another. */
const RETRY = Symbol('retry');

/**
 * Command lines one at a time (a destination without PIPELINING, or a client that did not group
 * them), up to the first that is refused. With PIPELINING, a leading RSET of ours goes with the first.
 */
async function oneByOne(client: SmtpConnection, lines: string[], before: (i: number) => void, pipelining: boolean): Promise<Reply[]> {
  const replies: Reply[] = [];
  let i = 0;
  while (i < lines.length) {
    const n = pipelining && i === 0 && lines[0] === 'RSET' && lines.length > 1 ? 2 : 1;
    const from = i;
    const got = await client.pipeline(lines.slice(i, i + n), (k) => before(from + k));
    replies.push(...got);
    i += n;
    if (got.some((r) => r.code >= 400)) break;
  }
  return replies;
}

/** The error code the listener's guard gives the client's data it refused on the way. */
export const REFUSED_BY_PROXY = 'EREFUSED';

export class ProxySession {
  readonly #destination: ProxyDestination;
  #mail: { from: string; params: string } | null = null;
  #mailReply: Reply | null = null;
  #inTransaction = false;
  /** The client pipelined this transaction's commands (its RCPT came in the same turn as its MAIL): so are they relayed. */
  #pipelined = false;
  /** Whether the RCPT being relayed came in the same turn as its MAIL. */
  #grouped = false;
  /** The destination's reply to a DATA relayed in one group with the last RCPT, until the client's data uses it. */
  #dataReply: Reply | null = null;
  /** RCPTs relayed ahead of their turn, with the destination's replies, until smtp-server hands them over. */
  #ahead: Array<Recipient & { reply: Reply }> = [];
  /** A RCPT relayed ahead that the destination took was never handed over: this transaction's data must not go. */
  #strayAhead = false;
  #startedAt = 0;
  #summary: TransactionSummary | null = null;
  #seq = 0;
  /** Recipients of the current transaction the destination took (the transcript's link holds this array). */
  #accepted: string[] = [];
  /** The command under way toward the destination (settled when none is). */
  #step: Promise<unknown> = Promise.resolve();
  #opening: Promise<Reply | null> | null = null;

  /** `id` names the client's session: its transactions are `<id>.1`, `<id>.2`… in the transcript. */
  constructor(readonly id: string, readonly destination: Destination, readonly tenant: string, deps: ProxyDeps) {
    this.#destination = new ProxyDestination(destination, tenant, deps);
  }

  get site(): string | null {
    return this.#destination.site;
  }

  /** The source address the session's slot came with (null: the system's choice, or no slot yet). */
  get source(): string | null {
    return this.#destination.source;
  }

  /**
   * MAIL FROM: relayed at once when the session is open, or when the client waits for its reply
   * (`clientWaits`: nothing came after it) and the destination's site can be named without a
   * recipient (ProxyDestination.siteKnown), so that the destination's own reply is the client's;
   * else kept for the first RCPT. A refused MAIL FROM ends the transaction: the connection and the
   * turn go back.
   */
  mail(from: string, params: string, clientWaits = false): Promise<Reply> {
    return this.#track(this.#mailNow(from, params, clientWaits));
  }

  async #mailNow(from: string, params: string, clientWaits: boolean): Promise<Reply> {
    const dest = this.#destination;
    this.#settleData();
    this.#ahead = [];
    this.#strayAhead = false;
    // An earlier transaction failed toward the destination (or found no turn): this one starts
    // afresh, on a new turn and a pooled or new connection.
    if (dest.failed) dest.startAfresh();
    this.#mail = { from, params };
    this.#mailReply = null;
    this.#summary = { sender: from, recipients: [], msTo354: null, final: null, bytes: 0 };
    this.#startedAt = Date.now();
    // Each further transaction is admitted as a delivery would be: holds, pauses and rates in force now.
    const refusal = dest.admission();
    if (refusal) return toReply(reply(451, STATUS.notAllowedNow, `${refusal}; try again later`));
    const now = !dest.conn && clientWaits && dest.siteKnown();
    if (!dest.conn && !now) {
      // What the client sends in this same turn (its RCPTs, DATA) it sent in one group: relayed as one.
      this.#pipelined = true;
      setImmediate(() => { this.#pipelined = false; });
      return toReply(reply(250, '2.1.0', 'Ok'));
    }
    for (;;) {
      if (!dest.conn) {
        // Its turn and a pooled (or new) connection now, on the site the session can name.
        const opened = await this.#whileOpening(dest.reopen());
        if (opened) return opened;
      }
      const relayed = await this.#relay(null);
      if (relayed === RETRY) {
        // A pooled session found gone: another (or a new one) for a client that waits for this
        // reply; else this MAIL goes with the first RCPT, on another.
        if (now) continue;
        return toReply(reply(250, '2.1.0', 'Ok'));
      }
      // The transaction ended at its MAIL FROM: no share of the site is held while the client decides.
      if (relayed.mail.code !== 250) await this.#yieldTurn();
      return relayed.mail;
    }
  }

  /**
   * RCPT TO: relayed (with the MAIL FROM kept for it), its reply passed back. `following`: the
   * RCPTs for the same domain the client sent right after this one, which smtp-server will hand
   * over next; where this one goes in a group they go in it too, and their replies wait for them.
   * `dataFollows`: the client has already sent DATA right after this RCPT (after the last of
   * `following`) and its message is not scanned, so DATA goes to the destination in the same
   * group; the client's data then uses its reply.
   */
  rcpt(to: string, params: string, dataFollows = false, following: Recipient[] = []): Promise<Reply> {
    const kept = this.#claim(to, params);
    if (kept) return this.#track(Promise.resolve(this.#recorded(to, kept)));
    // Read now: the turn the RCPT came in is over by the time the destination is open.
    this.#grouped = this.#pipelined;
    return this.#track(this.#rcptNow(to, params, dataFollows, following));
  }

  /**
   * Are the RCPTs after the one handed over worth reading ahead: no replies to RCPTs relayed ahead
   * wait for theirs (those are not read again), and RCPTs could go in one group (the destination
   * offers PIPELINING, or is not connected yet)?
   */
  get readsAhead(): boolean {
    const conn = this.#destination.conn;
    return this.#ahead.length === 0 && (!conn || conn.extensions.has('PIPELINING'));
  }

  /**
   * The reply kept for a RCPT relayed ahead of its turn, when this is that RCPT. Those before it
   * that were never handed over (smtp-server refused them after all, or the client's lines were
   * not what they seemed) are given up: one the destination took leaves this transaction's
   * envelope there other than the client's, so its data will not go.
   */
  #claim(to: string, params: string): Reply | null {
    const at = this.#ahead.findIndex((r) => r.to === to && r.params === params);
    if (at < 0) {
      this.#giveUpAhead(this.#ahead.length);
      return null;
    }
    this.#giveUpAhead(at);
    return this.#ahead.shift()!.reply;
  }

  /** The first `n` RCPTs relayed ahead will not be handed over: one the destination took makes the transaction stray. */
  #giveUpAhead(n: number): void {
    const gone = this.#ahead.splice(0, n);
    if (gone.some((r) => r.reply.code >= 200 && r.reply.code < 300)) this.#strayAhead = true;
  }

  #recorded(to: string, reply: Reply): Reply {
    if (reply.code >= 200 && reply.code < 300) this.#accepted.push(to);
    this.#summary?.recipients.push({ address: to, reply: reply.raw });
    return reply;
  }

  async #rcptNow(to: string, params: string, dataFollows: boolean, following: Recipient[]): Promise<Reply> {
    const reply = await this.#rcpt(to, domainOf(to), params, dataFollows, following);
    this.#summary?.recipients.push({ address: to, reply: reply.raw });
    return reply;
  }

  async #rcpt(to: string, domain: string, params: string, dataFollows: boolean, following: Recipient[]): Promise<Reply> {
    const dest = this.#destination;
    // A DATA relayed early that the client did not follow with its data: that transaction is broken off.
    if (this.#settleData()) dest.failed = tempfail(STATUS.badConnection, 'the client sent another RCPT after its DATA');
    if (dest.conn && !dest.failed && !(await dest.confirm(domain))) await this.#leaveGuessedSite();
    for (;;) {
      if (!dest.conn && !dest.failed) {
        const opened = await this.#whileOpening(dest.open(domain));
        if (opened) return (dest.failed = opened);
      }
      if (dest.failed || !dest.conn) return dest.failed ?? tempfail(STATUS.noAnswer, 'not connected');
      if (this.#mailReply && this.#mailReply.code !== 250) return this.#mailReply;
      // A recipient the session is not fit for is refused before anything of it is said.
      const refused = await dest.tlsRefusal(domain);
      if (refused) return refused;
      if (!dest.conn) continue;
      const relayed = await this.#relay(commandLine(`RCPT TO:<${to}>`, params, dest.conn.extensions), dataFollows, following);
      // A pooled session found gone before its RSET was answered: another one, or a new one.
      if (relayed === RETRY) continue;
      if (relayed.mail.code !== 250) return relayed.mail;
      this.#ahead = relayed.ahead.map((reply, i) => ({ ...following[i], reply }));
      const reply = relayed.last!;
      if (reply.code >= 200 && reply.code < 300) this.#accepted.push(to);
      return reply;
    }
  }

  /** Streams the message; resolves with the destination's final reply (or a 4xx when it failed). */
  data(body: Readable): Promise<Reply> {
    return this.#track(this.#dataNow(body));
  }

  async #dataNow(body: Readable): Promise<Reply> {
    const dest = this.#destination;
    // Smtp-server hands a transaction's RCPTs over before its DATA: any relayed ahead still waiting never will be.
    this.#giveUpAhead(this.#ahead.length);
    if (this.#strayAhead && dest.conn && !dest.failed) {
      // The destination took a recipient the client was never answered for: this transaction there
      // is not the client's, and only closing the connection ends it without delivering anything.
      body.resume();
      this.#dataReply = null;
      this.#breakOff();
      const refused = tempfail(STATUS.badConnection, 'a recipient relayed ahead of its turn was not the client\'s');
      if (this.#summary) this.#summary.final = refused.raw;
      return (dest.failed = refused);
    }
    const client = dest.conn;
    const early = this.#dataReply;
    this.#dataReply = null;
    if (!client || dest.failed) {
      body.resume();
      return dest.failed ?? tempfail(STATUS.noAnswer, 'not connected');
    }
    dest.messageStarts();
    let reply: Reply;
    try {
      const progress = (bytes: number) => {
        if (!this.#summary) return;
        if (this.#summary.msTo354 === null) this.#summary.msTo354 = Date.now() - this.#startedAt;
        this.#summary.bytes = bytes;
      };
      if (early && early.code !== 354) {
        body.resume();
        reply = early;
      } else {
        reply = early ? (await client.body(body, 1, progress))[0] : await client.data(body, progress);
      }
      this.#inTransaction = false;
    } catch (err) {
      reply = (err as NodeJS.ErrnoException).code === REFUSED_BY_PROXY ? this.#cutOff() : dest.broken(err);
    }
    if (this.#summary) this.#summary.final = reply.raw;
    dest.messageEnded(reply);
    await this.#yieldTurn();
    return reply;
  }

  /** The message will not be relayed (scanning refused or held it): the destination's transaction is reset; `reply` goes to the client. */
  abort(reply: Reply): Promise<Reply> {
    return this.#track(this.#abortNow(reply));
  }

  async #abortNow(reply: Reply): Promise<Reply> {
    this.#settleData();
    if (this.#destination.conn && !this.#destination.failed && this.#inTransaction) {
      const reset = await this.#command('RSET');
      if (reset.code === 250) this.#inTransaction = false;
    }
    if (this.#summary) this.#summary.final = reply.raw;
    return reply;
  }

  /** What the last transaction did, once (for the event sinks); null when already taken or none began. */
  takeSummary(): TransactionSummary | null {
    const summary = this.#summary;
    this.#summary = null;
    return summary && summary.recipients.length > 0 ? summary : null;
  }

  /**
   * The client left: a wait for a turn is given up, an opening under way is let finish (its
   * connection then counts against the site until it is closed here), QUIT toward the
   * destination, and the turn given back.
   */
  async close(): Promise<void> {
    this.#destination.leave();
    await this.#opening?.catch(() => undefined);
    // A command still waiting for the destination's reply (the client left after its final dot)
    // gets it first: a connection is pooled only between commands, never with a reply owed.
    await this.#step;
    await this.#handBack();
  }

  /**
   * The session failed inside the proxy: the destination connection is dropped at once (it may
   * be in the middle of anything) and the turn given back. `close()` then has nothing left to do.
   */
  abandon(): void {
    this.#destination.abandon();
  }

  /** A turn and connection being had: `close()` lets it finish first. Resolves with its refusal, or null. */
  async #whileOpening(opening: Promise<Reply | null>): Promise<Reply | null> {
    this.#opening = opening;
    try {
      return await opening;
    } finally {
      this.#opening = null;
    }
  }

  #track(step: Promise<Reply>): Promise<Reply> {
    this.#step = step.catch(() => undefined);
    return step;
  }

  /**
   * Between transactions the destination connection goes back to the pool and the turn back to
   * the scheduler: a client that keeps its connection open, idle, holds neither, and the site's
   * turns go round the tenants per message, as queued delivery's do. The next transaction takes a
   * turn and a pooled connection again (most often this same one).
   */
  async #yieldTurn(): Promise<void> {
    const dest = this.#destination;
    if (!dest.conn || dest.failed || dest.closed) return;
    await this.#handBack();
  }

  /** The connection back to the pool (or QUIT), unless a DATA relayed early still waits for its message; the turn back to the scheduler. */
  async #handBack(): Promise<void> {
    const dest = this.#destination;
    // Settled first: a connection still owed a message is closed where it is, never taken and left.
    const closed = this.#settleData();
    const client = dest.take();
    if (client && !closed) await dest.putBack(client, this.#inTransaction);
    dest.releaseTurn();
  }

  /**
   * A DATA relayed early whose 354 no data followed (the client left, or sent something else): the
   * destination waits for a message that will not come, and only closing the connection ends that
   * without delivering anything. True when it was closed.
   */
  #settleData(): boolean {
    const early = this.#dataReply;
    this.#dataReply = null;
    if (early?.code !== 354) return false;
    this.#breakOff();
    return true;
  }

  /** The destination's connection closed where it is (mid-transaction, maybe in its data): nothing of this transaction there is delivered. */
  #breakOff(): void {
    this.#destination.drop();
    this.#inTransaction = false;
    this.#mailReply = null;
  }

  /**
   * Says to the destination what it must hear before `line` (a RCPT), then `line`: RSET when its
   * state is not known to be clean (a pooled session not yet shown alive, or a transaction the
   * client started over), the transaction's MAIL FROM when it has not gone yet. All in one write
   * when the destination offers PIPELINING (RFC 2920: RSET, MAIL and RCPT may be grouped), else
   * one by one, stopping at the first refusal. Resolves with the reply that stands for MAIL (the
   * RSET's when that failed) and the reply to `line`; RETRY when the session was a pooled one
   * found gone (its connection is dropped, nothing was done there).
   */
  async #relay(line: string | null, dataFollows = false, following: Recipient[] = []): Promise<{ mail: Reply; last: Reply | null; ahead: Reply[] } | typeof RETRY> {
    const dest = this.#destination;
    const client = dest.conn!;
    const reset = dest.unverified || (this.#inTransaction && !this.#mailReply);
    const sendMail = !this.#mailReply;
    const pipelining = client.extensions.has('PIPELINING');
    // Only what the client itself grouped goes as one group (and our RSET with it): a client that
    // waits for each reply gets its commands relayed one by one, as it sent them.
    const grouped = pipelining && (this.#grouped || !sendMail);
    const withData = grouped && dataFollows && line !== null;
    const mail = sendMail ? commandLine(`MAIL FROM:<${this.#mail!.from}>`, this.#mail!.params, client.extensions) : null;
    // The RCPTs sent after this one go in its group only where the group is one.
    const ahead = grouped && line !== null ? following.map((r) => commandLine(`RCPT TO:<${r.to}>`, r.params, client.extensions)) : [];
    const { lines, mailAt } = relayLines({ reset, mail, line, ahead, data: withData });
    // The transaction's lines are tied to it in the transcript; its link lists the recipients the destination takes.
    const carry = (i: number) => {
      if (i !== mailAt) return;
      this.#accepted = [];
      dest.carry(`${this.id}.${++this.#seq}`, this.#accepted);
    };
    let replies: Reply[];
    try {
      replies = pipelining && (grouped || lines.length === 1 || (reset && !sendMail)) ? await client.pipeline(lines, carry) : await oneByOne(client, lines, carry, pipelining);
    } catch (err) {
      if (dest.unverified) return this.#dropUnverified(client);
      return { mail: dest.broken(err), last: null, ahead: [] };
    }
    const closing = replies.find((r) => r.code === 421);
    if (closing && !dest.unverified) {
      dest.failed = closing;
      dest.signal(closing);
    }
    let at = 0;
    if (reset) {
      const r = replies[at++];
      if (dest.unverified && r?.code !== 250) return this.#dropUnverified(client);
      dest.unverified = false;
      if (r.code !== 250) return { mail: r, last: null, ahead: [] };
      this.#inTransaction = false;
    }
    if (sendMail) {
      const r = replies[at++];
      if (!r) return { mail: this.#mailReply ?? tempfail(STATUS.noAnswer, 'no reply'), last: null, ahead: [] };
      this.#mailReply = r;
      this.#inTransaction = r.code === 250;
    }
    const last = line === null ? null : replies[at] ?? null;
    // A reply missing (the destination closed with 421 part way) leaves its RCPT to be handed over as any other.
    const aheadReplies = replies.slice(at + 1, at + 1 + ahead.length);
    if (withData) this.#dataReply = replies[at + 1 + ahead.length] ?? null;
    return { mail: this.#mailReply!, last, ahead: aheadReplies };
  }

  /**
   * The first recipient's route names another site (or host name) than the one the MAIL FROM
   * went to, named from the address alone: the MAIL FROM is reset there, the connection and the
   * turn go back, and the MAIL FROM goes again with this RCPT on the recipient's site, as a first
   * MAIL FROM kept for its RCPT does (the destination's reply to it then stands for the RCPT's).
   */
  async #leaveGuessedSite(): Promise<void> {
    await this.#handBack();
    this.#mailReply = null;
    this.#inTransaction = false;
  }

  /** The pooled session did not answer its RSET: closed, and the caller tries another. */
  #dropUnverified(client: SmtpConnection): typeof RETRY {
    this.#destination.dropUnverified(client);
    return RETRY;
  }

  async #command(line: string): Promise<Reply> {
    const dest = this.#destination;
    try {
      const reply = await dest.conn!.command(line);
      if (reply.code === 421) {
        dest.failed = reply;
        dest.signal(reply);
      }
      return reply;
    } catch (err) {
      return dest.broken(err);
    }
  }

  /**
   * The client's data was refused on the way (a bare line ending, too big): the destination's
   * connection was closed before the final dot, which says nothing about the destination. The
   * client keeps its turn; its next transaction opens a fresh connection.
   */
  #cutOff(): Reply {
    this.#destination.drop();
    this.#inTransaction = false;
    return tempfail(STATUS.badConnection, 'the message data was refused');
  }
}

export type { Dispatch };
