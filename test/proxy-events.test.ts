// proxy.eventsFile and proxy.webhook: one JSON line per proxied transaction, and the selected
// outcomes posted to a webhook.
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { waitUntil } from './helpers/app.js';
import { cleanup, proxy, runCleanup, sink, swaks, to } from './helpers/proxy-app.js';

afterEach(runCleanup);

describe('transparent proxy (loopback): transaction events', () => {
  it('writes one JSON line per transaction and posts the selected outcomes to a webhook', async () => {
    const mx = await sink({ host: '127.0.0.59', rcpt: (a) => (a.startsWith('no@') ? { code: 550, text: '5.1.1 unknown' } : undefined) });
    const posts: Array<Record<string, unknown>> = [];
    const hook = createServer((req: IncomingMessage, res) => {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => { posts.push(JSON.parse(body)); res.end('ok'); });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', () => r()));
    cleanup.push(() => new Promise((r) => hook.close(r)));
    const port = (hook.address() as { port: number }).port;
    const t = await proxy(() => to(mx), (dataDir) => ({ proxy: { eventsFile: join(dataDir, 'proxy.jsonl'), webhook: { url: `http://127.0.0.1:${port}/hook`, on: ['rejected'] } } }));
    await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'yes@dest.test']);
    await swaks(t.port('proxy'), ['--from', 'b@legacy.test', '--to', 'no@dest.test']);
    await waitUntil(() => posts.length === 1, 5_000, 'the webhook');
    expect(posts[0].text).toMatch(/^proxy rejected: <b@legacy\.test> → no@dest\.test via 127\.0\.0\.59:\d+ \(tenant _relay\): 550 5\.1\.1 unknown/);
    const events = (await readFile(join(t.dataDir, 'proxy.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    expect(events.map((e) => e.outcome)).toEqual(['delivered', 'rejected']);
    expect(events[0]).toMatchObject({ sender: 'a@legacy.test', tenant: '_relay', recipients: [{ address: 'yes@dest.test', reply: expect.stringMatching(/^250/) }], final: expect.stringMatching(/^250 /) });
    expect(events[0].msTo354).toBeGreaterThanOrEqual(0);
  });
});
