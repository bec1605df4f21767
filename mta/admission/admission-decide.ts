/*
 * What each level does to a sender at the door: pure functions of the level, the sender's
 * standing and the counts, with the reason each decision is counted by.
 *
 *   connect  blocked: 554 5.7.1 at every level. Known (and pinned, and trusted): greeted at once,
 *            up to the listener's maxClients. Unknown: never past maxClients less the reserved
 *            share (421 4.7.0 `reserve`); busy: no more than busy.maxConnections from its network
 *            (421 4.7.0) and the greeting waits busy.greetingDelay (a client that talks first is
 *            refused, as postscreen's pregreet test); overload: 421 4.7.0 (overload.refuse =
 *            connect), or greeted and then 451 4.7.1 at each RCPT (overload.refuse = rcpt).
 *   mail     the queue's intake paused (disk or memory at overload): 452 4.3.1 for everyone;
 *            busy or overload: no more than busy.messageRate MAIL FROM a minute from an unknown
 *            network (450 4.7.1).
 *   rcpt     overload: 451 4.7.1 for unknown senders — those greeted under it (overload.refuse =
 *            rcpt) and those greeted before it began alike, so a flood that opened its
 *            connections before the level rose cannot go on sending through them.
 *   data     the same rule once a message's body is in, before its scan (its RCPT came before
 *            the level rose): the engines' time goes to known senders' mail.
 * mode observe: the same decisions are made and counted as `would_<reason>`, and nobody is
 * delayed or refused; mode off: everyone is greeted, counted as `off`.
 * Nothing here touches a transaction already accepted: a level applies to what comes next.
 */
import { REPLIES, type SmtpReply } from '../../base/base-reply.js';
import type { AdmissionConfig } from './admission-config.js';
import type { Standing } from './admission-senders-tally.js';

export type Level = 'normal' | 'busy' | 'overload';
export type { Standing } from './admission-senders-tally.js';
export type Mode = AdmissionConfig['mode'];

export type DoorDecision =
  | { action: 'greet'; delayMs: number; reason: string; deferRcpt: boolean }
  | { action: 'refuse'; reply: SmtpReply; reason: string };

export interface DoorInput {
  level: Level;
  standing: Standing;
  /** Sessions open on the listener, this one not counted. */
  open: number;
  /** The listener's maxClients. */
  limit: number;
  /** Sessions open from this client's network, this one not counted. */
  networkOpen: number;
}

export const isKnown = (s: Standing): boolean => s === 'known' || s === 'pinned';

/** Sessions of a listener unknown senders may not take. */
export const reservedSessions = (limit: number, share: number): number => Math.min(limit - 1, Math.ceil(limit * share));

/** The decision as mode `on` makes it. */
function door(input: DoorInput, config: AdmissionConfig): DoorDecision {
  const greet = (reason: string, delayMs = 0, deferRcpt = false): DoorDecision => ({ action: 'greet', delayMs, reason, deferRcpt });
  const refuse = (reason: string, reply: SmtpReply): DoorDecision => ({ action: 'refuse', reply, reason });
  if (input.standing === 'blocked') return refuse('blocked', REPLIES.blockedSender);
  if (isKnown(input.standing)) return greet('known');
  if (input.open >= input.limit - reservedSessions(input.limit, config.reserve.sessions)) return refuse('reserve', REPLIES.reserveFull);
  if (input.level === 'overload') {
    return config.overload.refuse === 'connect' ? refuse('overload', REPLIES.overloaded) : greet('overload_rcpt', 0, true);
  }
  if (input.level === 'busy') {
    if (input.networkOpen >= config.busy.maxConnections) return refuse('busy_connections', REPLIES.busyConnections);
    return greet('busy_delay', config.busy.greetingDelay);
  }
  return greet('unknown');
}

/** The door's decision for one new connection under `config.mode`. */
export function decideDoor(input: DoorInput, config: AdmissionConfig): DoorDecision {
  if (config.mode === 'off') return { action: 'greet', delayMs: 0, reason: 'off', deferRcpt: false };
  const decision = door(input, config);
  if (config.mode === 'on') return decision;
  const acts = decision.action === 'refuse' || decision.delayMs > 0 || decision.deferRcpt;
  return { action: 'greet', delayMs: 0, reason: acts ? `would_${decision.reason}` : decision.reason, deferRcpt: false };
}

export interface MailInput {
  level: Level;
  standing: Standing;
  intake: 'open' | 'paused';
  /** MAIL FROM commands from this client's network in the last minute, this one counted. */
  networkMails: number;
}

/** At MAIL FROM: null to go on, or the refusal and its reason (`would_` ones in observe mode are not refusals). */
export function decideMail(input: MailInput, config: AdmissionConfig): { reply: SmtpReply | null; reason: string } | null {
  if (config.mode === 'off') return null;
  let found: { reply: SmtpReply; reason: string } | null = null;
  if (input.intake === 'paused') found = { reply: REPLIES.intakePaused, reason: 'intake_paused' };
  else if (!isKnown(input.standing) && input.level !== 'normal' && input.networkMails > config.busy.messageRate) {
    found = { reply: REPLIES.busyRate, reason: 'busy_rate' };
  }
  if (!found) return null;
  return config.mode === 'on' ? found : { reply: null, reason: `would_${found.reason}` };
}

/**
 * At RCPT: an unknown sender while the node is overloaded, whenever its session was greeted (under
 * overload with overload.refuse = rcpt, or before the level rose).
 */
export function decideRcpt(input: { level: Level; standing: Standing }, config: AdmissionConfig): { reply: SmtpReply | null; reason: string } | null {
  if (config.mode === 'off' || isKnown(input.standing)) return null;
  // Only while the node is overloaded: a session greeted under overload goes on once the level falls.
  if (input.level !== 'overload') return null;
  return config.mode === 'on' ? { reply: REPLIES.overloadedRcpt, reason: 'overload' } : { reply: null, reason: 'would_overload' };
}
