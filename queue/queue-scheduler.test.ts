import { describe, expect, it } from 'vitest';
import { Scheduler, type Job } from './queue-scheduler.js';

function job(tenant: string, domain: string, n: number, due = 0): Job {
  return { messageId: `${tenant}-${domain}-${n}`, tenant, domain, recipientIds: [n], due };
}

describe('scheduler', () => {
  it('never exceeds the total or the per-lane concurrency, and serves lanes in turn', async () => {
    const running = new Map<string, number>();
    let peak = 0;
    const peakLane = new Map<string, number>();
    const order: string[] = [];
    const release: Array<() => void> = [];
    const s = new Scheduler({ concurrency: 4, laneConcurrency: 2 }, async (j) => {
      const lane = `${j.tenant}/${j.domain}`;
      order.push(lane);
      running.set(lane, (running.get(lane) ?? 0) + 1);
      peak = Math.max(peak, [...running.values()].reduce((a, b) => a + b, 0));
      peakLane.set(lane, Math.max(peakLane.get(lane) ?? 0, running.get(lane)!));
      await new Promise<void>((r) => release.push(r));
      running.set(lane, running.get(lane)! - 1);
    });
    // a backlog of 10 in lane A, then 1 each in lanes B and C
    for (let i = 0; i < 10; i++) s.add(job('a', 'slow.test', i));
    s.add(job('b', 'x.test', 1));
    s.add(job('c', 'x.test', 1));
    expect(order).toEqual(['a/slow.test', 'a/slow.test', 'b/x.test', 'c/x.test']);
    while (release.length > 0) {
      release.shift()!();
      await new Promise((r) => setImmediate(r));
    }
    expect(peak).toBe(4);
    expect(peakLane.get('a/slow.test')).toBe(2);
    expect(order.filter((l) => l === 'a/slow.test')).toHaveLength(10);
  });

  it('holds jobs until they are due', async () => {
    const ran: string[] = [];
    const s = new Scheduler({ concurrency: 10, laneConcurrency: 10 }, async (j) => { ran.push(j.messageId); });
    s.add(job('a', 'x.test', 1, Date.now() + 150));
    s.add(job('a', 'x.test', 2, Date.now()));
    await new Promise((r) => setTimeout(r, 20));
    expect(ran).toEqual(['a-x.test-2']);
    await new Promise((r) => setTimeout(r, 250));
    expect(ran).toEqual(['a-x.test-2', 'a-x.test-1']);
    s.stop();
  });
});
