/*
 * Where the transparent proxy reports each relayed transaction besides its transcript: a JSON
 * lines file (one object per transaction: when, client, tenant, destination, site, source
 * address, sender, recipients with the destination's reply to each, the time to the
 * destination's 354, the final reply, the size, the outcome), and a webhook that receives
 * selected outcomes as a Slack-compatible payload ({"text": ...} plus the same object).
 *
 * Outcomes: delivered (2xx to the data), rejected (5xx anywhere that ended the transaction),
 * deferred (4xx), failed (the destination broke or could not be reached).
 * Network: HTTP(S) POST to the configured webhook URL only; a slow or failing webhook is logged
 * and never delays the client (5 s limit per post).
 * Settings: proxy.eventsFile, proxy.webhook.{url,on}.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import type { Logger } from 'pino';

export type ProxyOutcome = 'delivered' | 'rejected' | 'deferred' | 'failed';

export interface ProxyEvent {
  at: string;
  outcome: ProxyOutcome;
  client: string;
  tenant: string;
  destination: string;
  site: string | null;
  source: string | null;
  sender: string;
  recipients: Array<{ address: string; reply: string }>;
  msTo354: number | null;
  final: string | null;
  bytes: number;
}

export interface ProxyEventSettings {
  eventsFile?: string;
  webhook?: { url: string; on: ProxyOutcome[] };
}

const WEBHOOK_TIMEOUT_MS = 5_000;

export function outcomeOf(final: string | null, recipients: Array<{ reply: string }>): ProxyOutcome {
  const last = final ?? recipients.map((r) => r.reply).find((r) => !r.startsWith('2')) ?? null;
  if (last === null) return 'failed';
  if (/^451 4\.4\.[125] destination failed/.test(last)) return 'failed';
  if (last.startsWith('2')) return 'delivered';
  return last.startsWith('5') ? 'rejected' : 'deferred';
}

export class ProxyEvents {
  readonly #file: WriteStream | null;

  constructor(private readonly settings: ProxyEventSettings, private readonly log: Logger) {
    this.#file = settings.eventsFile ? createWriteStream(settings.eventsFile, { flags: 'a' }) : null;
    this.#file?.on('error', (err) => log.error({ err, file: settings.eventsFile }, 'cannot write proxy events'));
  }

  emit(event: ProxyEvent): void {
    this.#file?.write(JSON.stringify(event) + '\n');
    const hook = this.settings.webhook;
    if (hook && hook.on.includes(event.outcome)) void this.#post(hook.url, event);
  }

  async #post(url: string, event: ProxyEvent): Promise<void> {
    const rcpts = event.recipients.map((r) => r.address).join(', ');
    const text = `proxy ${event.outcome}: <${event.sender}> → ${rcpts} via ${event.destination} (tenant ${event.tenant}): ${event.final ?? event.recipients.at(-1)?.reply ?? ''}`;
    try {
      const res = await fetch(url, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text, event }), signal: AbortSignal.timeout(WEBHOOK_TIMEOUT_MS),
      });
      if (!res.ok) this.log.warn({ url, status: res.status }, 'proxy webhook refused the event');
      await res.body?.cancel();
    } catch (err) {
      this.log.warn({ err, url }, 'proxy webhook failed');
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.#file ? this.#file.end(() => resolve()) : resolve()));
  }
}
