// proxy.scan: a scanned tenant's proxied mail goes through the engines and Ichidan's structure limits
// before the destination sees it; a refused message never reaches it, a clean one is relayed.
import { writeFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { waitUntil } from './helpers/app.js';
import { nestedMail } from './helpers/padded-mail.js';
import { proxy, runCleanup, sink, swaks, to } from './helpers/proxy-app.js';
import { recordsDb } from './helpers/records.js';

afterEach(runCleanup);

describe('transparent proxy (loopback): scanning a tenant\'s mail', () => {
  it('scans a tenant\'s proxied mail when asked: a refused message never reaches the destination, a clean one is relayed', async () => {
    const mx = await sink({ host: '127.0.0.60' });
    const t = await proxy(() => to(mx), () => ({
      tenants: { legacy: { networks: ['127.0.0.1/32'] } },
      engines: [{ name: 'attachments', type: 'policy' }],
      proxy: { scan: ['legacy'] },
    }));
    const exe = join(t.dataDir, 'exe.eml');
    writeFileSync(exe, ['From: a@legacy.test', 'To: x@dest.test', 'Subject: invoice', 'MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary="b"', '',
      '--b', 'Content-Type: text/plain', '', 'see attached', '--b', 'Content-Type: application/octet-stream',
      'Content-Disposition: attachment; filename="invoice.pdf.exe"', 'Content-Transfer-Encoding: base64', '', 'TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA', '--b--', ''].join('\r\n'));
    const refused = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test', '--data', exe]);
    expect(refused).toMatch(/<\*\* 550 5\.7\.1 message refused: .*invoice\.pdf\.exe/);
    const clean = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test', '--body', 'nothing attached']);
    expect(clean).toMatch(/<-  250 2\.6\.0 Ok: sunk/);
    await mx.waitFor(1);
    expect(mx.messages).toHaveLength(1);
    expect(mx.messages[0].data.toString()).toContain('nothing attached');
    const db = recordsDb(t.dataDir);
    await waitUntil(() => (db.prepare(`SELECT COUNT(*) AS n FROM scans`).get() as { n: number }).n === 2, 5_000, 'both scan records');
    const actions = (db.prepare(`SELECT action FROM scans ORDER BY at`).all() as Array<{ action: string }>).map((r) => r.action);
    db.close();
    expect(actions).toEqual(['reject', 'accept']);
    // nothing of either message is left in the spool
    await waitUntil(async () => (await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt').length === 0, 5_000, 'an empty spool');
  });

  it('refuses a scanned tenant\'s proxied message whose structure is past the limits, before the destination sees it', async () => {
    const mx = await sink({ host: '127.0.0.61' });
    const t = await proxy(() => to(mx), () => ({
      tenants: { legacy: { networks: ['127.0.0.1/32'] } },
      engines: [{ name: 'attachments', type: 'policy' }],
      proxy: { scan: ['legacy'] },
    }));
    const deep = join(t.dataDir, 'deep.eml');
    writeFileSync(deep, nestedMail({ name: 'report.pdf', body: '%PDF-1.4' }, 30));
    const refused = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test', '--data', deep]);
    expect(refused).toMatch(/<\*\* 550 5\.6\.0 message refused: MIME nesting deeper than 16 levels/);
    expect(mx.messages).toHaveLength(0);
  });
});
