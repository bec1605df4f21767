/*
 * Turns for live sessions (the transparent proxy, mta/proxy/): a connection to a site taken
 * through the scheduler like a delivery, under the same caps, fairness and blocks.
 *
 * Takes: the tenant, the site (as delivery resolved it), how long to wait, and a signal that the
 *   session ended meanwhile.
 * Gives: the source address to connect from and the function that gives the turn back; or a
 *   rejection after `waitMs` without a turn, or when `leave` aborts (the scheduler's turn, when it
 *   comes, then goes straight back).
 * Network: none.
 */
import type { Scheduler, SiteRef, Source } from './queue-scheduler.js';

export interface LiveTurn {
  site: string;
  source: Source;
  release: () => void;
}

export function acquireLiveTurn(scheduler: Scheduler, tenant: string, site: SiteRef, waitMs: number, leave?: AbortSignal): Promise<LiveTurn> {
  return new Promise((resolve, reject) => {
    let state: 'waiting' | 'given' | 'gave up' = 'waiting';
    const left = () => giveUp('the session ended while waiting for a turn');
    const giveUp = (why: string) => {
      if (state !== 'waiting') return;
      state = 'gave up';
      clearTimeout(timer);
      leave?.removeEventListener('abort', left);
      reject(new Error(why));
    };
    const timer = setTimeout(() => giveUp(`no turn at ${site.key} within ${waitMs} ms (the site is at its limit, paused or held)`), waitMs);
    if (leave?.aborted) return left();
    // A session asks for a turn per transaction: each wait takes its listener off again.
    leave?.addEventListener('abort', left, { once: true });
    scheduler.add({
      messageId: '', tenant, domain: site.key, recipientIds: [], due: 0,
      live: {
        site,
        cancelled: () => state === 'gave up',
        run: (d) => {
          // Dispatched after its client gave up: the turn goes straight back.
          if (state !== 'waiting') return Promise.resolve();
          state = 'given';
          clearTimeout(timer);
          leave?.removeEventListener('abort', left);
          return new Promise<void>((release) => resolve({ site: d.site, source: d.source, release: () => release() }));
        },
      },
    });
  });
}
