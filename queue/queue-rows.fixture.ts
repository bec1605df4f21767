/*
 * Rows of the queue database as the unit tests build them: a message and a recipient with every
 * column filled with a plain value, received at `received`, the test's own values on top.
 * Takes: the arrival time and the columns a test cares about. Gives: a MessageRow or RecipientRow.
 */
import type { MessageRow, RecipientRow } from './queue-store-sql.js';

export function messageRow(received: number, over: Partial<MessageRow> = {}): MessageRow {
  return {
    id: 'Q1', size: 100, sender: 'alice@src.test', received_at: received, trace: '', ret: null, envid: null, smtputf8: 0, body8bit: 0,
    client: '', helo: '', auth_user: null, listener: 'mx', kind: 'mail', state: 'active', note: null, corrupt_kind: null,
    set_aside_at: null, quarantine: null, strip: null, ...over,
  };
}

export function recipientRow(id: number, received: number, over: Partial<RecipientRow> = {}): RecipientRow {
  return {
    id, message_id: 'Q1', tenant: 'acme', address: `r${id}@dst.test`, domain: 'dst.test', orcpt: null, notify: null, state: 'queued',
    attempts: 0, next_attempt: received, first_attempt: null, last_code: null, last_status: null, last_reply: null, last_host: null,
    warned: 0, owed: null, bounce_class: null, updated_at: received, ...over,
  };
}
