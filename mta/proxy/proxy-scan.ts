/*
 * Scanning for the transparent proxy: a proxied message of a tenant that has scanning on
 * (`proxy.scan`) goes through the accept step (queue/accept/accept-step.ts) in its relay mode,
 * exactly as queued mail does, and only then is relayed — or refused to the client before the
 * destination has seen a byte of it.
 *
 *   reject / tempfail   the engines' reply goes to the client (550 5.7.1 / 451 4.7.1);
 *   quarantine          the message is stored and held in the queue (released with `ichidan
 *                       quarantine release`, then delivered by the queued path), and the client
 *                       gets 250 with its queue id;
 *   accept / tag        relayed: the verdict's headers, then the spool file as received.
 * Bad data is refused as the listeners refuse it (the accept step's guards); data that breaks off
 * is the proxy listener's to answer (its destination transaction is reset).
 * Takes: the client's data stream and envelope; gives what the proxy says or relays.
 */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { ScanInput, ScanOutcome } from './proxy-listener.js';
import { toReply } from '../../delivery/smtp/smtp-wire.js';
import type { Queue } from '../../queue/index.js';
import { acceptMessage, type RelayedMessage } from '../../queue/accept/accept-step.js';
import type { Snapshot } from '../mta-snapshot.js';

/** Whether the tenant's proxied mail is scanned. */
export function proxyScans(setting: boolean | string[], tenant: string): boolean {
  return setting === true || (Array.isArray(setting) && setting.includes(tenant));
}

export async function scanProxied(input: ScanInput, snapshot: Snapshot, queue: Queue, log: Logger): Promise<ScanOutcome> {
  const { config } = snapshot;
  const result = await acceptMessage({
    mode: 'relay',
    stream: input.stream,
    envelope: {
      sender: input.sender,
      recipients: input.recipients.map((address) => ({ tenant: input.tenant, address, domain: address.slice(address.lastIndexOf('@') + 1).toLowerCase(), orcpt: null, notify: null })),
      // What the proxy does not learn from its client (it relays MAIL FROM's parameters as they come).
      ret: null, envid: null, smtputf8: false, body8bit: true, authUser: null,
      client: input.client, helo: input.helo, listener: input.listener,
    },
    clientName: null,
    snapshot,
    limits: config.limits,
    hostname: config.hostname,
    // A transparent proxy adds no Received field.
    trace: () => '',
  }, queue, log);
  switch (result.kind) {
    // The client's data broke off (it left mid-DATA): nothing was accepted, nothing is kept.
    case 'incomplete': throw result.error;
    case 'refused': return { kind: 'answer', reply: toReply(result.reply) };
    case 'queued': return { kind: 'held', reply: toReply(result.reply) };
    case 'relay': return { kind: 'relay', open: () => relayed(result.message), done: () => result.message.done() };
  }
}

/** The verdict's header fields, then the message as received. */
function relayed(message: RelayedMessage): Readable {
  return Readable.from((async function* () {
    if (message.headers) yield Buffer.from(message.headers, 'utf8');
    yield* message.kept ? [message.kept] : createReadStream(message.path);
  })());
}
