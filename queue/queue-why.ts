/*
 * Why a message is where it is, as one paragraph an operator reads (`ichidan queue why`, the
 * `why` of GET /v1/queue/messages/ID): built from the stored facts only — the message row, its
 * recipients (state, attempts, last reply and host, next attempt, bounce class), the egress
 * events in force (an operator's hold of a tenant or a site, a tenant suspended at a site, a
 * (site, source) pair paused by the throttle: queue-records-egress.ts) and the expiry
 * (`queue.maxAge` after arrival).
 *
 * Pure: no clock, no I/O. Takes the facts, now, the settings and the site each recipient domain
 * belongs to (looked up by the caller as delivery would; null when unknown, and then only the
 * events that name no site apply). Recipients in the same situation are told together.
 * RFC 3461: whether a bounce went to the sender (queue-bounce.ts `wantsNotice`).
 */
import { wantsNotice } from './queue-bounce.js';
import type { EgressEvent } from './queue-records-egress.js';
import type { MessageRow, RecipientRow } from './queue-store-sql.js';

export interface WhyContext {
  now: number;
  /** queue.maxAge, ms: when the queue gives up on a message after its arrival. */
  maxAge: number;
  /** Egress events in force now (holds, suspensions, pauses). */
  blocks: EgressEvent[];
  /** The site of a recipient domain; null when it could not be looked up. */
  siteOf: (domain: string) => string | null;
}

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');

/** "in 4m", "3h ago": how far a time is from now, roughly. */
export function relative(ms: number, now: number): string {
  const d = Math.abs(ms - now);
  const amount = d < 90_000 ? `${Math.round(d / 1000)}s` : d < 5_400_000 ? `${Math.round(d / 60_000)}m` : d < 129_600_000 ? `${Math.round(d / 3_600_000)}h` : `${Math.round(d / 86_400_000)}d`;
  return ms >= now ? `in ${amount}` : `${amount} ago`;
}

const at = (ms: number, now: number) => `${iso(ms)} (${relative(ms, now)})`;
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
const quote = (s: string | null) => `"${(s ?? '').replace(/\s+/g, ' ').trim()}"`;
const list = (rows: RecipientRow[]) => rows.map((r) => r.address).join(', ');

/** What keeps a recipient's domain from being delivered now: the egress events in force for its tenant and site. */
function blocksOf(r: RecipientRow, ctx: WhyContext): string[] {
  const site = ctx.siteOf(r.domain);
  const out: string[] = [];
  for (const e of ctx.blocks) {
    if (e.kind === 'slowed') continue;
    if (e.tenant !== null && e.tenant !== r.tenant) continue;
    if (e.site !== null && e.site !== site) continue;
    if (e.tenant === null && e.site === null) continue;
    const until = e.until === null ? 'until released' : `until ${at(e.until, ctx.now)}`;
    const where = [e.tenant && `tenant ${e.tenant}`, e.site && `site ${e.site}`].filter(Boolean).join(' at ') + (e.source ? ` (from ${e.source})` : '');
    const what = e.kind === 'hold' ? `held by ${e.actor === 'operator' ? 'an operator' : e.actor}`
      : e.kind === 'suspended' ? 'suspended by the throttle control (its share of the throttle replies)'
        : 'paused by the throttle control (the destination pushed back)';
    out.push(`${where} is ${what} ${until} (egress event ${e.id}: ${e.reason})`);
  }
  return out;
}

function queuedSentence(rows: RecipientRow[], msg: MessageRow, ctx: WhyContext): string {
  const r = rows[0];
  const who = list(rows);
  const expires = msg.received_at + ctx.maxAge;
  if (r.owed === 'failed') {
    return `${who} was refused for good (${quote(r.last_reply)} from ${r.last_host ?? 'the destination'}), but its bounce could not be written yet: it is retried at ${at(r.next_attempt, ctx.now)}, without contacting the destination again.`;
  }
  const blocks = blocksOf(r, ctx);
  const blocked = blocks.length > 0 ? ` Delivery waits: ${blocks.join('; ')}.` : '';
  const due = r.next_attempt <= ctx.now ? `is due now (since ${at(r.next_attempt, ctx.now)})` : `is next tried at ${at(r.next_attempt, ctx.now)}`;
  if (r.attempts === 0) return `${who} waits for a first delivery attempt and ${due}; the queue gives up at ${at(expires, ctx.now)} (queue.maxAge).${blocked}`;
  return `${who} was deferred ${plural(r.attempts, 'time')}, the last reply from ${r.last_host ?? 'the destination'}: ${quote(r.last_reply)}; it ${due}, and the queue gives up at ${at(expires, ctx.now)} (queue.maxAge).${blocked}`;
}

function heldSentence(rows: RecipientRow[], msg: MessageRow, ctx: WhyContext): string {
  const r = rows[0];
  const who = list(rows);
  if (msg.quarantine !== null) return `${who} ${rows.length === 1 ? 'is' : 'are'} quarantined by the engines (${msg.quarantine}) and wait${rows.length === 1 ? 's' : ''} until an operator releases the message.`;
  const since = `since ${at(r.updated_at, ctx.now)}`;
  if (r.last_reply === 'held by route') return `${who}: held by a route (routes: hold) for ${r.domain} ${since}, until an operator releases it.`;
  return `${who}: ${r.last_reply ?? 'held'} ${since}, until released (ichidan queue release).`;
}

function finalSentence(rows: RecipientRow[], msg: MessageRow, ctx: WhyContext): string {
  const r = rows[0];
  const who = list(rows);
  const when = at(r.updated_at, ctx.now);
  if (r.state === 'delivered') return `${who}: delivered ${when} by ${r.last_host ?? 'the destination'}: ${quote(r.last_reply)}.`;
  if (r.state === 'transferred') return `${who}: handed to a cluster peer ${when}: ${quote(r.last_reply)}.`;
  if (r.state === 'purged') return `${who}: removed ${when}, no notice sent (${r.last_reply ?? 'purged'}).`;
  const notice = wantsNotice(msg, r, 'failed') ? 'a bounce went to the sender' : 'no bounce was sent (null sender or NOTIFY)';
  if (r.bounce_class === 'suppressed') return `${who}: bounced ${when} without contacting the destination, being on the tenant's suppression list (${quote(r.last_reply)}); ${notice}.`;
  return `${who}: bounced ${when} (class ${r.bounce_class ?? 'other'}) on ${quote(r.last_reply)}${r.last_host ? ` from ${r.last_host}` : ''}; ${notice}.`;
}

/** One paragraph: why the message is where it is. */
export function whyMessage(msg: MessageRow, recipients: RecipientRow[], ctx: WhyContext): string {
  const head = `Message ${msg.id} from <${msg.sender}> arrived ${at(msg.received_at, ctx.now)}.`;
  if (msg.state === 'corrupt') {
    return `${head} It was set aside as corrupt (${msg.corrupt_kind ?? 'unknown'}: ${msg.note ?? 'no note'})${msg.set_aside_at ? ` ${at(msg.set_aside_at, ctx.now)}` : ''}; nothing of it is delivered until an operator requeues or deletes it (ichidan queue corrupt).`;
  }
  // Recipients in the same situation are told in one sentence.
  const groups = new Map<string, RecipientRow[]>();
  for (const r of recipients) {
    const key = [r.state, r.last_reply, r.last_host, r.attempts, r.state === 'queued' ? r.next_attempt : '', r.owed, r.bounce_class, r.tenant, r.domain].join('\u0000');
    const g = groups.get(key);
    if (g) g.push(r); else groups.set(key, [r]);
  }
  const order = ['held', 'queued', 'bounced', 'purged', 'delivered', 'transferred'];
  const sentences = [...groups.values()]
    .sort((a, b) => order.indexOf(a[0].state) - order.indexOf(b[0].state))
    .map((rows) => rows[0].state === 'queued' ? queuedSentence(rows, msg, ctx) : rows[0].state === 'held' ? heldSentence(rows, msg, ctx) : finalSentence(rows, msg, ctx));
  const open = recipients.some((r) => r.state === 'queued' || r.state === 'held');
  const tail = open ? '' : ' Every recipient is final: the message leaves the queue at the next sweep.';
  return [head, ...sentences].join(' ') + tail;
}
