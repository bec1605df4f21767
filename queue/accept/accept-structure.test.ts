import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { attachmentMail, EXE, nestedMail, paddingHeaders } from '../../test/helpers/padded-mail.js';
import { StructureCheck, type StructureLimits } from './accept-structure.js';

const LIMITS: StructureLimits = { maxHeaderSize: 256 * 1024, maxHeaderFields: 1000, maxMimeDepth: 16, maxMimeParts: 500 };

/** Feeds `text` in chunks of `size` bytes, as DATA arrives. */
async function check(text: string | Buffer, size = 4096, limits = LIMITS): Promise<string | null> {
  const c = new StructureCheck(limits);
  const bytes = Buffer.from(text);
  for (let at = 0; at < bytes.length; at += size) await c.write(bytes.subarray(at, at + size));
  return c.finish();
}

describe('structure check', () => {
  it.each([
    ['a plain message', 'Subject: hi\r\n\r\nhello\r\n', null],
    ['an attachment', attachmentMail(EXE), null],
    ['16 nested multiparts', nestedMail(EXE, 16), null],
    ['17 nested multiparts', nestedMail(EXE, 17), 'MIME nesting deeper than 16 levels'],
    ['17 levels of forwarded (attached, not inline) messages and multiparts', nestedMail(EXE, 17, 'rfc822'), 'MIME nesting deeper than 16 levels'],
    ['499 parts', attachmentMail(EXE, { padding: 496 }), null],
    ['501 parts', attachmentMail(EXE, { padding: 498 }), 'more than 500 MIME parts'],
    ['1,000 header fields', attachmentMail(EXE, { extraHeaders: paddingHeaders(994, 10) }), null],
    ['1,001 header fields', attachmentMail(EXE, { extraHeaders: paddingHeaders(995, 10) }), 'more than 1000 header fields in one header block'],
    ['a header block past 256 KB', attachmentMail(EXE, { extraHeaders: paddingHeaders(900, 300) }), 'a header block larger than 262144 bytes'],
  ])('%s', async (_what, text, expected) => {
    expect(await check(text)).toBe(expected);
    expect(await check(text, 1)).toBe(expected);
  });

  it('reads a 30 MB body through to the end in bounded memory', async () => {
    // Every chunk a buffer of its own, as DATA delivers them, each watched through a weak reference;
    // after a full collection, while the check is still open, whatever it kept is still reachable.
    // (Counting chunks, not process.memoryUsage(): V8 frees the bytes behind a buffer on a thread of
    // its own, some time after the collection that found it unreachable.)
    setFlagsFromString('--expose-gc');
    const collect = runInNewContext('gc') as () => void;
    const c = new StructureCheck(LIMITS);
    await c.write(Buffer.from('Subject: big\r\nContent-Type: application/octet-stream\r\n\r\n'));
    const chunks: WeakRef<Buffer>[] = [];
    for (let n = 0; n < 460; n++) {
      const chunk = Buffer.alloc(65536, 'A');
      chunks.push(new WeakRef(chunk));
      await c.write(chunk);
    }
    // A weak reference's target is kept until the job that made it ends: collect on a later turn.
    await new Promise((resolve) => setImmediate(resolve));
    collect();
    const kept = chunks.filter((r) => r.deref() !== undefined).length;
    expect(await c.finish()).toBeNull();
    expect(kept).toBeLessThan(64);
  });

  it('splits a base64 attached message too: its own depth counts, and a large one streams through', async () => {
    const wrap = (inner: string) => [
      'Subject: fwd', 'MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary="w"', '', '--w',
      'Content-Type: message/rfc822', 'Content-Transfer-Encoding: base64', 'Content-Disposition: attachment; filename="fwd.eml"', '',
      Buffer.from(inner).toString('base64').replace(/.{76}/g, '$&\r\n'), '--w--', '',
    ].join('\r\n');
    // The wrapper adds two levels (its multipart, the attached message's own top).
    expect(await check(wrap(nestedMail(EXE, 14)))).toBeNull();
    expect(await check(wrap(nestedMail(EXE, 15)))).toBe('MIME nesting deeper than 16 levels');
    const big = wrap(attachmentMail({ name: 'data.bin', body: Buffer.alloc(8_000_000, 5) }));
    expect(await check(big, 65536)).toBeNull();
  });

  it('stops at once when abandoned, and answers nothing', async () => {
    const c = new StructureCheck(LIMITS);
    await c.write(Buffer.from(attachmentMail(EXE).slice(0, 200)));
    c.abandon();
    expect(await c.finish()).toBeNull();
  });
});
