/*
 * The receiving side of a cluster transfer (a peer's drain handing this node its queue): who may
 * make one, what its recipients are, and what becomes of one already queued here.
 *
 * Takes: the MAIL FROM / RCPT TO parameters smtp-server hands over, the client's address, the
 *   transaction's config snapshot, the queue (to look the original id up).
 * Gives: at MAIL FROM, no transfer, a transfer (queue/cluster/cluster-transfer.ts: signed by the
 *   cluster's secret, fresh, from a `cluster.peers` address when that list is given), or a
 *   refusal (555 5.5.4, as for any parameter not recognised: a client on the internet learns
 *   nothing, and can neither name a tenant nor skip the scan); at RCPT TO, the recipient's tenant,
 *   NOTIFY and ORCPT from its signed parameter — the peer already judged the relay, so the
 *   recipient is not checked against this node's domains again. A transfer parameter outside a
 *   transfer is refused the same way. A node being drained takes no transfer (it takes no mail).
 * At DATA: the message is queued under its original queue id, unless that id is already here (a
 *   transfer repeated after its 250 was lost): the recipients already in it are not queued again
 *   (250 "already queued" when that is all of them); any others go under a new id.
 * Settings: cluster.secret, cluster.peers.
 */
import type { BlockList } from 'node:net';
import type { QueueStore } from '../../queue/queue-store.js';
import { readRecipient, readTransfer, RCPT_PARAM, XFER_PARAM, type TransferMessage } from '../../queue/cluster/cluster-transfer.js';
import type { NewRecipient } from '../../queue/index.js';
import type { Config } from '../mta-config-schema.js';
import { blockListOf, inList, normalizeDomain, splitAddress } from './ingress-policy.js';

type Args = Record<string, unknown> | false | undefined;

export type TransferCheck = { kind: 'none' } | { kind: 'refused'; why: string } | { kind: 'transfer'; transfer: TransferMessage };

const peerLists = new WeakMap<Config, BlockList>();

function fromPeer(config: Config, address: string): boolean {
  if (config.cluster.peers.length === 0) return true;
  let list = peerLists.get(config);
  if (!list) peerLists.set(config, list = blockListOf(config.cluster.peers));
  return inList(list, address);
}

/** What a MAIL FROM's parameters say about a transfer. */
export function checkTransfer(args: Args, sender: string, client: string, config: Config, now: number): TransferCheck {
  const param = args ? args[XFER_PARAM] : undefined;
  if (param === undefined) return args && args[RCPT_PARAM] !== undefined ? { kind: 'refused', why: `${RCPT_PARAM} on MAIL FROM` } : { kind: 'none' };
  const secret = config.cluster.secret;
  if (secret === undefined) return { kind: 'refused', why: 'a transfer, but cluster.secret is not set here' };
  if (!fromPeer(config, client)) return { kind: 'refused', why: 'a transfer from outside cluster.peers' };
  const transfer = readTransfer(secret, param, sender, now);
  return transfer ? { kind: 'transfer', transfer } : { kind: 'refused', why: 'a transfer whose signature, age or sender does not hold' };
}

/** A recipient of a transfer, from its signed parameter; null when it has none that holds. */
export function transferRecipient(args: Args, transfer: TransferMessage, address: string, config: Config): NewRecipient | null {
  const secret = config.cluster.secret;
  const parts = splitAddress(address);
  if (!args || secret === undefined || !parts) return null;
  const r = readRecipient(secret, args[RCPT_PARAM], transfer.id, address);
  if (!r) return null;
  return { tenant: r.tenant, address, domain: normalizeDomain(parts.domain), notify: r.notify, orcpt: r.orcpt };
}

/** A transfer parameter on a RCPT TO outside a transfer. */
export function strayRecipientParameter(args: Args): boolean {
  return !!args && (args[RCPT_PARAM] !== undefined || args[XFER_PARAM] !== undefined);
}

/**
 * Where a transferred message goes: its original id, or — that id already queued here — only the
 * recipients not in it yet, under a new id (null: every one is already here).
 */
export function transferPlacement(store: Pick<QueueStore, 'message' | 'recipientsOf'>, id: string, recipients: NewRecipient[]): { queueId: string | undefined; recipients: NewRecipient[] } | null {
  if (!store.message(id)) return { queueId: id, recipients };
  const present = new Set(store.recipientsOf(id).map((r) => r.address));
  const missing = recipients.filter((r) => !present.has(r.address));
  return missing.length === 0 ? null : { queueId: undefined, recipients: missing };
}
