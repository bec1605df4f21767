// Structure past Ichidan's own limits (header block, header fields, MIME parts, nesting) is a
// verdict about the message, with or without engines: refused with 550 5.6.0, or quarantined when
// scanning.unscannable says so; mail just inside the limits passes; a bad limit names its key.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, demoConfig, parseConfig, startApp, type ConfigInput, type TestApp } from './helpers/app.js';
import { attachmentMail, EXE, nestedMail, paddingHeaders } from './helpers/padded-mail.js';
import { readQuarantine, recordsDb } from './helpers/records.js';
import { sendRaw } from './helpers/send-raw.js';
import { startSink, type Sink } from './helpers/sink.js';

const send = (t: TestApp, raw: string) => sendRaw(t, raw, { from: 'mallory@sender.test' });
const POLICY = { name: 'attachments', type: 'policy' as const };

/** Padded messages carrying a blocked .exe, each past one of the default limits. */
const PADDED: Array<[string, () => string, RegExp]> = [
  ['a 1.2 MB header block', () => attachmentMail(EXE, { extraHeaders: paddingHeaders(20_000) }), /^550 5\.6\.0 message refused: a header block larger than 262144 bytes/],
  ['1,200 header fields of 10 bytes', () => attachmentMail(EXE, { extraHeaders: paddingHeaders(1_200, 10) }), /^550 5\.6\.0 message refused: more than 1000 header fields in one header block/],
  ['1,200 MIME parts', () => attachmentMail(EXE, { padding: 1_200 }), /^550 5\.6\.0 message refused: more than 500 MIME parts/],
  ['30 nested multiparts', () => nestedMail(EXE, 30), /^550 5\.6\.0 message refused: MIME nesting deeper than 16 levels/],
  ['30 levels of forwarded messages and multiparts', () => nestedMail(EXE, 30, 'rfc822'), /^550 5\.6\.0 message refused: MIME nesting deeper than 16 levels/],
];

describe('structure past limits: refused with or without engines', () => {
  let sink: Sink;
  let t: TestApp | undefined;
  beforeAll(async () => { sink = await startSink({ host: '127.0.0.2' }); });
  afterEach(async () => { await t?.stop(); t = undefined; });
  afterAll(async () => { await sink?.close(); });

  const config = (extra: Partial<ConfigInput>) => demoConfig(sink, extra);

  for (const [label, engines] of [['no engine configured', []], ['the policy engine configured', [POLICY]]] as const) {
    it(`refuses each padded .exe with 550 5.6.0 and keeps nothing (${label}); mail within the limits still passes`, async () => {
      t = await startApp(config({ engines: [...engines] }));
      for (const [what, build, reply] of PADDED) {
        const res = await send(t, build());
        expect(res.ok, `${what}: ${res.reply}`).toBe(false);
        expect(res.reply, what).toMatch(reply);
      }
      expect((await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt')).toEqual([]);
      // Just inside every limit: a deep but legal nesting, many parts, a large header block.
      const fine = await send(t, nestedMail({ name: 'report.pdf', body: '%PDF-1.4' }, 16, 'rfc822'));
      expect(fine.reply).toMatch(/^250 /);
      const many = await send(t, attachmentMail({ name: 'report.pdf', body: '%PDF-1.4' }, { padding: 400, extraHeaders: paddingHeaders(900, 100) }));
      expect(many.reply).toMatch(/^250 /);
    });
  }

  it('quarantines instead when scanning.unscannable says so, with or without engines (an .exe the policy engine finds is still refused)', async () => {
    for (const engines of [[], [POLICY]]) {
      t = await startApp(config({ engines, scanning: { unscannable: 'quarantine' } }));
      const res = await send(t, nestedMail({ name: 'report.pdf', body: '%PDF-1.4' }, 30));
      expect(res.reply).toMatch(/^250 /);
      const db = recordsDb(t.dataDir);
      try {
        const [q] = readQuarantine(db);
        expect(q.quarantine).toBe('structure: MIME nesting deeper than 16 levels');
      } finally {
        db.close();
      }
      const exe = await send(t, nestedMail(EXE, 30));
      expect(exe.reply).toMatch(engines.length ? /^550 5\.7\.1 message refused: attachment "setup\.exe"/ : /^250 /);
      await t.stop();
      t = undefined;
    }
  });

  it('names the key of a bad limit', () => {
    expect(() => config({ limits: { maxMimeDepth: 0 } })('/tmp')).not.toThrow();
    expect(() => parseConfig(baseConfig('/tmp', { limits: { maxMimeDepth: 0 } }), 'test')).toThrow(/limits\.maxMimeDepth/);
    expect(() => parseConfig(baseConfig('/tmp', { scanning: { unscannable: 'accept' as never } }), 'test')).toThrow(/scanning\.unscannable/);
  });
});
