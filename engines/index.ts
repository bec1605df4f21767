/*
 * engines/ — scanning the accepted bytes before the reply to DATA.
 *
 * Takes: the spool file DATA just wrote (read back from the page cache, never copied) and the
 *   transaction's context (client, HELO, sender, recipients, queue id).
 * Gives: one verdict for the message — accept (optionally with headers to add in front of the
 *   body), reject (5xx, no bounce is ever sent for it) or tempfail (4xx).
 * Network: the engines' own daemons (none yet).
 * Settings: none yet; the scanning-engines work adds the `engines:` section, the adapters
 *   (clamd, spamd, rspamd, ICAP, sender authentication, built-in policy) and the aggregation.
 *
 * Today the engine set is empty and its verdict is always "accept": the DATA path already calls
 * it at the right moment so adapters slot in without touching the SMTP code.
 */
import type { SmtpReply } from '../mta/mta-reply.js';

export interface ScanContext {
  queueId: string;
  client: string;
  helo: string;
  sender: string;
  recipients: string[];
  authUser: string | null;
}

export type ScanVerdict =
  | { action: 'accept'; headers: string }
  | { action: 'reject'; reply: SmtpReply }
  | { action: 'tempfail'; reply: SmtpReply };

export interface EngineSet {
  readonly size: number;
  scan(spoolPath: string, context: ScanContext, signal: AbortSignal): Promise<ScanVerdict>;
  close(): Promise<void>;
}

export const emptyEngineSet: EngineSet = {
  size: 0,
  async scan() {
    return { action: 'accept', headers: '' };
  },
  async close() {},
};
