/*
 * A drain pass: the queued recipients of this node handed to live cluster peers over SMTP, one
 * transaction per message (the peer queues it under the same queue id: cluster-transfer.ts says
 * what the transaction carries and why).
 *
 * Takes: the live peers (not this node, not draining: mta/mta-drain.ts chooses them), the
 *   store's queued recipients, the claims the queue's own attempts take (a recipient an attempt
 *   is delivering is left to it, and one being transferred is not attempted meanwhile).
 * Gives: how many recipients a peer took and how many transactions failed, counted into the
 *   drain's tally as each transaction ends. A recipient
 *   is marked `transferred` (final, no notice: the peer answers for it now) only after the
 *   peer's 250, in the same write as an outcome. Anything else — the peer unreachable, a 4xx or
 *   5xx, the connection lost mid-DATA — leaves it queued, scheduled as before, for the next pass
 *   or its normal delivery: nothing is lost. A message whose transaction failed is offered to the
 *   next peer at once, and a peer that failed is not offered more in this pass.
 * Not transferred: held recipients (an operator's hold, a quarantine: decisions of this node),
 *   and recipients whose bounce is owed (their outcome is already decided).
 * Network: through delivery/ (`Egress.transfer`), to the peers' SMTP listeners.
 * Settings: cluster.secret.
 */
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { OutboundMessage, PeerAddress, RecipientOutcome } from '../delivery/index.js';
import { recipientParameter, transferParameter } from './cluster/cluster-transfer.js';
import type { MessageRow, QueueStore, RecipientRow } from './queue-store.js';

export interface TransferDeps {
  store: QueueStore;
  log: Logger;
  /** This node's name and the cluster's secret (what the peer checks). */
  node: string;
  secret: string;
  /** Recipients ("message id/recipient number") claimed by an attempt or a transfer now. */
  inFlight: Set<string>;
  /** True while a recipient's outcome waits to be written (it is not moved meanwhile). */
  owes: (messageId: string, recipientId: number) => boolean;
  /** The message as delivery sends it: the trace fields, then the spool file. */
  open: (msg: MessageRow) => Readable;
  send: (peer: PeerAddress, msg: OutboundMessage) => Promise<RecipientOutcome[]>;
  /** Recipients left queued go back to the scheduler (their job may have found them claimed). */
  reschedule: (rows: RecipientRow[]) => void;
}

/** What a drain counts, updated as each transaction ends (so progress shows during a long pass). */
export interface TransferTally {
  /** Recipients a peer took. */
  transferred: number;
  /** Transactions that failed (the message stayed here). */
  failed: number;
}

/** How many messages are in transfer at once (each on its own pooled session). */
const CONCURRENCY = 8;

const key = (r: RecipientRow) => `${r.message_id}/${r.id}`;

/** One pass over the queued messages; resolves with how many messages it looked at. */
export async function transferPass(deps: TransferDeps, peers: PeerAddress[], tally: TransferTally): Promise<number> {
  const byMessage = new Map<string, RecipientRow[]>();
  for (const r of deps.store.openRecipients()) {
    const list = byMessage.get(r.message_id);
    if (list) list.push(r); else byMessage.set(r.message_id, [r]);
  }
  const healthy = [...peers];
  const ids = [...byMessage.keys()];
  let next = 0;
  const worker = async () => {
    while (next < ids.length && healthy.length > 0) {
      const i = next++;
      await transferMessage(deps, ids[i], i, healthy, tally);
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, ids.length) }, worker));
  return ids.length;
}

/** One message to the first peer that takes it (starting at a different one per message). */
async function transferMessage(deps: TransferDeps, id: string, index: number, healthy: PeerAddress[], tally: TransferTally): Promise<void> {
  const msg = deps.store.message(id);
  if (!msg || msg.state !== 'active') return;
  const rows = deps.store.recipientsOf(id).filter((r) => r.state === 'queued' && r.owed === null && !deps.inFlight.has(key(r)) && !deps.owes(id, r.id));
  if (rows.length === 0) return;
  for (const r of rows) deps.inFlight.add(key(r));
  let left = rows;
  try {
    const order = healthy.map((_, k) => healthy[(index + k) % healthy.length]);
    for (const peer of order) {
      // Done, or a peer another transaction of this pass found failing.
      if (left.length === 0) break;
      if (!healthy.includes(peer)) continue;
      const taken = await offer(deps, peer, msg, left);
      if (taken === null) {
        tally.failed++;
        const at = healthy.indexOf(peer);
        if (at >= 0 && healthy.length > 1) healthy.splice(at, 1);
        continue;
      }
      tally.transferred += taken.size;
      left = left.filter((r) => !taken.has(r.id));
    }
  } finally {
    for (const r of left) deps.inFlight.delete(key(r));
  }
  if (left.length > 0) deps.reschedule(left);
}

/**
 * One transaction with one peer; the recipients it took (recorded as transferred), or null when
 * it took none. Recipients it took whose record could not be written stay claimed: the peer has
 * them, so this process must not deliver them as well.
 */
async function offer(deps: TransferDeps, peer: PeerAddress, msg: MessageRow, rows: RecipientRow[]): Promise<Set<number> | null> {
  const now = Date.now();
  const outbound: OutboundMessage = {
    queueId: msg.id,
    tenant: rows[0].tenant,
    sender: msg.sender,
    // The DSN parameters travel signed in the transfer's own parameters, exactly as stored here.
    recipients: rows.map((r) => ({
      id: r.id, address: r.address, notify: null, orcpt: null,
      parameters: [recipientParameter(deps.secret, msg.id, r.address, { tenant: r.tenant, notify: r.notify, orcpt: r.orcpt })],
    })),
    size: msg.size + Buffer.byteLength(msg.trace),
    ret: null,
    envid: null,
    body8bit: msg.body8bit === 1,
    parameters: [transferParameter(deps.secret, { id: msg.id, from: deps.node, at: now, sender: msg.sender, ret: msg.ret, envid: msg.envid, smtputf8: msg.smtputf8 === 1 })],
    open: () => deps.open(msg),
  };
  let outcomes: RecipientOutcome[];
  try {
    outcomes = await deps.send(peer, outbound);
  } catch (err) {
    deps.log.warn({ err, qid: msg.id, peer: peer.node }, 'transfer failed');
    return null;
  }
  const took = outcomes.filter((o) => o.verdict === 'delivered');
  const refused = outcomes.find((o) => o.verdict !== 'delivered');
  if (refused) deps.log.info({ qid: msg.id, peer: peer.node, reply: refused.reply, recipients: outcomes.length - took.length }, 'transfer not taken; left queued');
  if (took.length === 0) return null;
  const ids = took.map((o) => o.id);
  const taken = new Set(ids);
  try {
    await deps.store.write([{ op: 'transferRecipients', messageId: msg.id, ids, host: peer.node, reply: `transferred to ${peer.node}: ${took[0].reply}`, now: Date.now() }], { essential: true });
  } catch (err) {
    deps.log.error({ err, qid: msg.id, peer: peer.node, recipients: ids.length }, 'a peer took these recipients but the queue could not record it; they stay claimed (not delivered from here) until restart');
    for (const r of rows) if (taken.has(r.id)) deps.inFlight.add(key(r));
    // Returned as taken so the caller neither offers them elsewhere nor frees their claim.
    return taken;
  }
  deps.log.info({ qid: msg.id, peer: peer.node, recipients: ids.length }, 'transferred');
  return taken;
}
