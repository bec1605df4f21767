import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { crc32 } from 'node:zlib';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONTEXT, spooled } from '../../test/helpers/engine-contract.js';
import { spoolMessage, type EngineOutcome } from '../engine.js';
import { createPolicy, policyOptions } from './policy.js';

const CRLF = '\r\n';

/**
 * One MIME part. With a name, the Content-Type carries it as `name` and, unless `disposition` is
 * false, the Content-Disposition (attachment by default) as `filename`; `headers` replaces both.
 */
interface Part {
  type: string;
  name?: string;
  body: Buffer | string;
  encoding?: 'base64' | '7bit';
  disposition?: string | false;
  headers?: string[];
}

function part(p: Part): string {
  const name = p.name ? `; name="${p.name}"` : '';
  const lines = p.headers ? [...p.headers] : [`Content-Type: ${p.type}${name}`];
  if (!p.headers && p.disposition !== false && (p.name || p.disposition)) {
    lines.push(`Content-Disposition: ${p.disposition ?? 'attachment'}${p.name ? `; filename="${p.name}"` : ''}`);
  }
  const encoding = p.encoding ?? (Buffer.isBuffer(p.body) ? 'base64' : '7bit');
  lines.push(`Content-Transfer-Encoding: ${encoding}`, '');
  const body = encoding === 'base64'
    ? Buffer.from(p.body).toString('base64').replace(/.{76}/g, `$&${CRLF}`)
    : String(p.body).replace(/\r?\n/g, CRLF);
  return lines.join(CRLF) + CRLF + body + CRLF;
}

function mail(parts: Part[], subject = 'Documents'): string {
  const head = [
    'From: Alice <alice@sender.test>', 'To: bob@example.test', `Subject: ${subject}`,
    'Date: Wed, 25 Nov 2026 10:00:00 +0000', `Message-ID: <${subject.replace(/\W/g, '')}@sender.test>`, 'MIME-Version: 1.0',
  ];
  if (parts.length === 0) return [...head, 'Content-Type: text/plain', '', 'Hello Bob.', ''].join(CRLF);
  const b = `b-${subject.replace(/\W/g, '')}`;
  const body = [part({ type: 'text/plain', body: 'Please find the files attached.' }), ...parts.map(part)]
    .map((p) => `--${b}${CRLF}${p}`).join('') + `--${b}--${CRLF}`;
  return [...head, `Content-Type: multipart/mixed; boundary="${b}"`, '', body].join(CRLF);
}

/** A minimal PE image: an MZ header whose e_lfanew (0x3C) points at "PE\0\0". */
function peImage(): Buffer {
  const b = Buffer.alloc(256);
  b.write('MZ', 0, 'latin1');
  b.writeUInt32LE(0x80, 0x3c);
  b.write('PE\0\0', 0x80, 'latin1');
  return b;
}

function elfImage(): Buffer {
  return Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]), Buffer.alloc(56)]);
}

/** A stored (uncompressed) zip built from its APPNOTE records; `encrypted` sets flag bit 0. */
function zip(entries: Array<{ name: string; data: Buffer | string; encrypted?: boolean }>, prefix = Buffer.alloc(0)): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const data = Buffer.from(e.data);
    const name = Buffer.from(e.name);
    const flags = e.encrypted ? 1 : 0;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0); local.writeUInt16LE(20, 4); local.writeUInt16LE(flags, 6);
    local.writeUInt32LE(crc32(data), 14); local.writeUInt32LE(data.length, 18); local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(name.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0); central.writeUInt16LE(20, 4); central.writeUInt16LE(20, 6); central.writeUInt16LE(flags, 8);
    central.writeUInt32LE(crc32(data), 16); central.writeUInt32LE(data.length, 20); central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(name.length, 28); central.writeUInt32LE(offset, 42);
    locals.push(local, name, data);
    centrals.push(central, name);
    offset += 30 + name.length + data.length;
  }
  const directory = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); end.writeUInt16LE(entries.length, 8); end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(directory.length, 12); end.writeUInt32LE(offset, 16);
  return Buffer.concat([prefix, ...locals, directory, end]);
}

/** RAR 4: marker, main header, one file header (flag 0x04 when encrypted), end of archive. */
function rar4(name: string, opts: { encryptedFile?: boolean; encryptedHeaders?: boolean } = {}): Buffer {
  const main = Buffer.alloc(13);
  main[2] = 0x73; main.writeUInt16LE(opts.encryptedHeaders ? 0x0080 : 0, 3); main.writeUInt16LE(13, 5);
  const n = Buffer.from(name);
  const file = Buffer.alloc(32 + n.length);
  file[2] = 0x74; file.writeUInt16LE(0x8000 | (opts.encryptedFile ? 0x04 : 0), 3); file.writeUInt16LE(file.length, 5);
  file.writeUInt32LE(4, 7); file.writeUInt16LE(n.length, 26); n.copy(file, 32);
  const end = Buffer.alloc(7);
  end[2] = 0x7b; end.writeUInt16LE(7, 5);
  return Buffer.concat([Buffer.from('Rar!\x1a\x07\x00', 'latin1'), main, file, Buffer.from('data'), end]);
}

/** RAR 5: signature, main header, one file header with its name, end of archive. */
function rar5(name: string): Buffer {
  const block = (body: number[]) => Buffer.from([0, 0, 0, 0, body.length, ...body]);
  const n = [...Buffer.from(name)];
  return Buffer.concat([
    Buffer.from('Rar!\x1a\x07\x01\x00', 'latin1'),
    block([1, 0, 0]),
    block([2, 0x02, 4, 0, 4, 0, 0, 0, n.length, ...n]), Buffer.from('data'),
    block([5, 0, 0]),
  ]);
}

/** 7z whose (unencoded) end header names the AES coder, as 7z -mhe writes. */
function sevenZip(withAes: boolean): Buffer {
  const header = Buffer.from([0x17, 0x06, 0x0b, 0x01, 0x24, ...(withAes ? [0x06, 0xf1, 0x07, 0x01] : [0x03, 0x01, 0x01]), 0x00]);
  const start = Buffer.alloc(32);
  Buffer.from([0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c, 0, 4]).copy(start);
  start.writeBigUInt64LE(16n, 12);
  start.writeBigUInt64LE(BigInt(header.length), 20);
  return Buffer.concat([start, Buffer.alloc(16, 0x55), header]);
}

const PDF = Buffer.from('%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n');

function forwarded(inner: string, encoding: '7bit' | 'base64'): Part {
  return { type: 'message/rfc822', body: encoding === 'base64' ? Buffer.from(inner) : inner, encoding };
}

/** `inner` forwarded as an attachment `levels` times, alternately 7bit and base64. */
function nest(levels: number, inner: string): string {
  let message = inner;
  for (let n = 0; n < levels; n++) message = mail([forwarded(message, n % 2 ? 'base64' : '7bit')], `Level${n}`);
  return message;
}

const violation = (rule: string, action = 'reject'): EngineOutcome => ({ status: 'violation', rule, action } as EngineOutcome);
const clean: EngineOutcome = { status: 'clean' };

const CASES: Array<{ title: string; message: string | Buffer; options?: Record<string, unknown>; expected: EngineOutcome }> = [
  { title: 'plain text', message: mail([]), expected: clean },
  { title: 'a PDF attachment', message: mail([{ type: 'application/pdf', name: 'report.pdf', body: PDF }]), expected: clean },
  { title: 'an .exe', message: mail([{ type: 'application/octet-stream', name: 'setup.exe', body: peImage() }]), expected: violation('attachment "setup.exe": blocked extension .exe') },
  { title: 'a double extension', message: mail([{ type: 'application/pdf', name: 'invoice.pdf.exe', body: PDF }]), expected: violation('attachment "invoice.pdf.exe": double extension') },
  { title: 'trailing dots and case', message: mail([{ type: 'application/octet-stream', name: 'Run.SCR..', body: 'x' }]), expected: violation('attachment "Run.SCR..": blocked extension .scr') },
  { title: 'PE content under a .txt name', message: mail([{ type: 'text/plain', name: 'notes.txt', body: peImage() }]), expected: violation('attachment "notes.txt": executable content (PE)') },
  { title: 'ELF content without a name', message: mail([{ type: 'application/octet-stream', body: elfImage(), disposition: 'attachment' }]), expected: violation('attachment (unnamed application/octet-stream): executable content (ELF)') },
  { title: 'text that merely starts with MZ', message: mail([{ type: 'text/plain', name: 'mz.txt', body: Buffer.from('MZ Racing results\n'.repeat(20)) }]), expected: clean },
  { title: 'a zip holding an .exe', message: mail([{ type: 'application/zip', name: 'files.zip', body: zip([{ name: 'readme.txt', data: 'hi' }, { name: 'tools/run.exe', data: peImage() }]) }]), expected: violation('attachment "files.zip": contains "tools/run.exe" (blocked extension .exe)') },
  { title: 'a zip of documents', message: mail([{ type: 'application/zip', name: 'docs.zip', body: zip([{ name: 'a.pdf', data: PDF }, { name: 'b.txt', data: 'b' }]) }]), expected: clean },
  { title: 'a zip whose directory is past the first 64 KiB', message: mail([{ type: 'application/zip', name: 'big.zip', body: zip([{ name: 'filler.bin', data: Buffer.alloc(2_000_000, 7) }, { name: 'payload.js', data: 'x' }]) }]), expected: violation('attachment "big.zip": contains "payload.js" (blocked extension .js)') },
  { title: 'a zip behind a prefix', message: mail([{ type: 'application/zip', name: 'sfx.zip', body: zip([{ name: 'x.vbs', data: 'x' }], Buffer.from('PK\x03\x04junk-before-the-archive', 'latin1')) }]), expected: violation('attachment "sfx.zip": contains "x.vbs" (blocked extension .vbs)') },
  { title: 'an encrypted zip', message: mail([{ type: 'application/zip', name: 'secret.zip', body: zip([{ name: 'a.pdf', data: PDF, encrypted: true }]) }]), expected: violation('attachment "secret.zip": encrypted archive') },
  { title: 'an encrypted zip, allowed', options: { allowEncryptedArchives: true }, message: mail([{ type: 'application/zip', name: 'secret.zip', body: zip([{ name: 'a.pdf', data: PDF, encrypted: true }]) }]), expected: clean },
  { title: 'a zip holding an .exe, archives unchecked', options: { checkArchives: false }, message: mail([{ type: 'application/zip', name: 'files.zip', body: zip([{ name: 'run.exe', data: 'x' }]) }]), expected: clean },
  { title: 'a RAR 4 with encrypted files', message: mail([{ type: 'application/x-rar', name: 'a.rar', body: rar4('a.pdf', { encryptedFile: true }) }]), expected: violation('attachment "a.rar": encrypted archive') },
  { title: 'a RAR 4 with encrypted headers', message: mail([{ type: 'application/x-rar', name: 'a.rar', body: rar4('a.pdf', { encryptedHeaders: true }) }]), expected: violation('attachment "a.rar": encrypted archive') },
  { title: 'a RAR 4 holding a .bat', message: mail([{ type: 'application/x-rar', name: 'a.rar', body: rar4('go.bat') }]), expected: violation('attachment "a.rar": contains "go.bat" (blocked extension .bat)') },
  { title: 'a RAR 5 holding an .lnk', message: mail([{ type: 'application/x-rar', name: 'b.rar', body: rar5('photo.jpg.lnk') }]), expected: violation('attachment "b.rar": contains "photo.jpg.lnk" (double extension)') },
  { title: 'a RAR 5 of documents', message: mail([{ type: 'application/x-rar', name: 'b.rar', body: rar5('photo.jpg') }]), expected: clean },
  { title: 'a 7z with AES', message: mail([{ type: 'application/x-7z-compressed', name: 'c.7z', body: sevenZip(true) }]), expected: violation('attachment "c.7z": encrypted archive') },
  { title: 'a 7z without AES', message: mail([{ type: 'application/x-7z-compressed', name: 'c.7z', body: sevenZip(false) }]), expected: clean },
  { title: 'an attached message holding an .exe', message: mail([forwarded(mail([{ type: 'application/octet-stream', name: 'evil.exe', body: peImage() }], 'Inner'), '7bit')]), expected: violation('attachment "evil.exe": blocked extension .exe') },
  { title: 'a base64 attached message holding PE content', message: mail([forwarded(mail([{ type: 'text/plain', name: 'readme.txt', body: peImage() }], 'Inner2'), 'base64')]), expected: violation('attachment "readme.txt": executable content (PE)') },
  { title: 'an operator list', options: { blockedExtensions: ['.PDF'] }, message: mail([{ type: 'application/octet-stream', name: 'setup.exe', body: 'x' }, { type: 'application/pdf', name: 'report.pdf', body: PDF }]), expected: violation('attachment "report.pdf": blocked extension .pdf') },
  { title: 'quarantine as the action', options: { action: 'quarantine' }, message: mail([{ type: 'application/octet-stream', name: 'setup.exe', body: 'x' }]), expected: violation('attachment "setup.exe": blocked extension .exe', 'quarantine') },
  { title: 'an inline text/plain named with a double extension', message: mail([{ type: 'text/plain', name: 'invoice.pdf.js', disposition: 'inline', body: 'WScript.Echo(1)' }]), expected: violation('attachment "invoice.pdf.js": double extension') },
  { title: 'a text/plain named .js without a disposition', message: mail([{ type: 'text/plain', name: 'invoice.js', disposition: false, body: 'WScript.Echo(1)' }]), expected: violation('attachment "invoice.js": blocked extension .js') },
  { title: 'an inline text/html named .hta', message: mail([{ type: 'text/html', name: 'update.hta', disposition: 'inline', body: '<script>x()</script>' }]), expected: violation('attachment "update.hta": blocked extension .hta') },
  { title: 'an inline text/plain named .txt', message: mail([{ type: 'text/plain', name: 'notes.txt', disposition: 'inline', body: 'hello' }]), expected: clean },
  { title: 'a harmless filename over a blocked Content-Type name', message: mail([{ type: 'application/pdf', body: PDF, headers: ['Content-Type: application/pdf; name="report.exe"', 'Content-Disposition: attachment; filename="report.pdf"'] }]), expected: violation('attachment "report.exe": blocked extension .exe') },
  { title: 'an RFC 2047 encoded name', message: mail([{ type: 'application/octet-stream', body: 'x', headers: ['Content-Type: application/octet-stream; name="=?UTF-8?B?0YHRh9C10YIuZXhl?="'] }]), expected: violation('attachment "счет.exe": blocked extension .exe') },
  { title: 'an RFC 2231 encoded filename', message: mail([{ type: 'text/plain', body: 'x', headers: ['Content-Type: text/plain', "Content-Disposition: inline; filename*=UTF-8''facture%2Epdf%2Evbs"] }]), expected: violation('attachment "facture.pdf.vbs": double extension') },
  { title: 'ESC, BEL and a newline in the name', message: mail([{ type: 'text/plain', body: 'x', headers: ['Content-Type: text/plain', "Content-Disposition: inline; filename*=UTF-8''%1B%5D0%3Bowned%07%1B%5B2Jreport%0D%0Aforged%C2%9B.exe"] }]), expected: violation('attachment "?]0;owned??[2Jreport??forged?.exe": blocked extension .exe') },
  { title: 'a name past 100 characters', message: mail([{ type: 'application/octet-stream', name: `${'a'.repeat(150)}.pdf.exe`, body: 'x' }]), expected: violation(`attachment "${'a'.repeat(70)}…${'a'.repeat(21)}.pdf.exe": double extension`) },
  { title: 'an escape in a name inside a zip', message: mail([{ type: 'application/zip', name: 'z.zip', body: zip([{ name: 'a\x1b[31m.exe', data: 'x' }]) }]), expected: violation('attachment "z.zip": contains "a?[31m.exe" (blocked extension .exe)') },
  { title: 'an inline attached message holding a named text part', message: mail([{ type: 'message/rfc822', disposition: 'inline', body: mail([{ type: 'text/plain', name: 'run.cmd', disposition: false, body: 'del *' }], 'Inner3') }]), expected: violation('attachment "run.cmd": blocked extension .cmd') },
  { title: 'an .exe five attached messages deep', message: nest(5, mail([{ type: 'application/octet-stream', name: 'deep.exe', body: 'x' }], 'Deep')), expected: violation('attachment "deep.exe": blocked extension .exe') },
  { title: 'an .exe twenty attached messages deep', message: nest(20, mail([{ type: 'application/octet-stream', name: 'deep.exe', body: 'x' }], 'Deep')), expected: violation('attachment "deep.exe": blocked extension .exe') },
  { title: 'an .exe 21 attached messages deep (past the depth judged): unscannable, never clean', message: nest(21, mail([{ type: 'application/octet-stream', name: 'deep.exe', body: 'x' }], 'Deep')), expected: { status: 'unscannable', reason: 'attached messages nested deeper than 20 levels' } },
  { title: 'malformed MIME: binary garbage', message: Buffer.from([0, 1, 2, 0xff, 0xfe, 13, 10, 0x80, ...Buffer.alloc(300, 0x41), 13, 10]), expected: clean },
  {
    title: 'malformed MIME: no closing boundary, broken base64',
    message: ['Content-Type: multipart/mixed; boundary="z"', '', '--z', 'Content-Type: application/octet-stream; name="a.com"', 'Content-Transfer-Encoding: base64', '', 'TVqQAA!!M%%AAAA'].join(CRLF),
    expected: violation('attachment "a.com": blocked extension .com'),
  },
];

describe('policy engine', () => {
  let dir: string;
  const deps = { hostname: 'mx.ichidan.test', resolver: null, log: pino({ level: 'silent' }) };
  const engine = (extra: Record<string, unknown> = {}) => createPolicy(policyOptions.parse({ name: 'policy', type: 'policy', ...extra }), deps);

  beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'ichidan-policy-')); });
  afterAll(async () => { if (dir) await rm(dir, { recursive: true, force: true }); });

  it.each(CASES.map((c, i) => ({ ...c, i })))('$title', async ({ message, options, expected, i }) => {
    const msg = await spooled(dir, `case-${i}.eml`, message);
    const result = await engine(options).scan(msg, CONTEXT, AbortSignal.timeout(10_000));
    expect(result.outcome).toEqual(expected);
  });

  it('names an archive whose directory it could not reach', async () => {
    const entries = Array.from({ length: 30_000 }, (_, n) => ({ name: `folder-with-a-long-name/file-${n}.txt`, data: '' }));
    const msg = await spooled(dir, 'huge-dir.eml', mail([{ type: 'application/zip', name: 'many.zip', body: zip(entries) }]));
    const result = await engine().scan(msg, CONTEXT, AbortSignal.timeout(10_000));
    expect(result.outcome).toEqual(clean);
    expect(result.detail).toEqual({ uninspected: ['many.zip'] });
  });

  it('answers timeout at once when the deadline passes mid-scan', async () => {
    const big = mail([{ type: 'application/octet-stream', name: 'data.bin', body: Buffer.alloc(20_000_000, 3) }]);
    const msg = await spooled(dir, 'big.eml', big);
    const t0 = performance.now();
    const result = await engine().scan(msg, CONTEXT, AbortSignal.timeout(30));
    expect(result.outcome).toMatchObject({ status: 'error', error: 'timeout' });
    expect(performance.now() - t0).toBeLessThan(1_000);
    const whole = await engine().scan(msg, CONTEXT, AbortSignal.timeout(20_000));
    expect(whole.outcome).toEqual(clean);
  });

  it('splits a 20 MB text message without holding its text', async () => {
    const line = 'All work and no play makes Jack a dull boy, all work and no play makes Jack.\r\n';
    const text = line.repeat(Math.ceil(20_000_000 / line.length));
    const path = join(dir, 'big-text.eml');
    await writeFile(path, ['From: a@sender.test', 'To: b@example.test', 'Subject: long', 'Content-Type: text/plain', '', text].join(CRLF));
    const msg = spoolMessage(path, (await stat(path)).size);
    // The live set, not the garbage a stream leaves behind it: a full collection at each sample.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const live = () => { gc(); const m = process.memoryUsage(); return m.heapUsed + m.arrayBuffers; };
    const before = live();
    let peak = before;
    const sampling = setInterval(() => { peak = Math.max(peak, live()); }, 25);
    const result = await engine().scan(msg, CONTEXT, AbortSignal.timeout(30_000));
    clearInterval(sampling);
    expect(result.outcome).toEqual(clean);
    // Holding the text would cost at least its 20 MB; streaming it, a few read chunks.
    expect(peak - before).toBeLessThan(msg.size / 4);
  });

  it('answers unscannable, not an engine error, for MIME the parser gives up on (a header block past 1 MiB)', async () => {
    const junk = Array.from({ length: 20_000 }, (_, n) => `X-Junk-${n}: ${'j'.repeat(60)}`).join(CRLF);
    const msg = await spooled(dir, 'huge-head.eml', `${junk}${CRLF}Subject: hi${CRLF}${CRLF}body${CRLF}`);
    const result = await engine().scan(msg, CONTEXT, AbortSignal.timeout(10_000));
    expect(result.outcome).toMatchObject({ status: 'unscannable', reason: expect.stringMatching(/^unparseable MIME: .*header size/) });
  });

  it('answers unscannable for more parts than the parser takes (an .exe after 1,200 padding parts)', async () => {
    const padding = Array.from({ length: 1_200 }, (_, n) => ({ type: 'text/plain', body: `pad ${n}` }));
    const msg = await spooled(dir, 'many-parts.eml', mail([...padding, { type: 'application/octet-stream', name: 'setup.exe', body: 'x' }]));
    const result = await engine().scan(msg, CONTEXT, AbortSignal.timeout(10_000));
    expect(result.outcome).toMatchObject({ status: 'unscannable', reason: expect.stringMatching(/^unparseable MIME: .*child nodes/) });
  });

  it('answers timeout for a signal already aborted', async () => {
    const msg = await spooled(dir, 'pre.eml', mail([]));
    const result = await engine().scan(msg, CONTEXT, AbortSignal.abort());
    expect(result.outcome).toMatchObject({ status: 'error', error: 'timeout' });
  });

  it('reports a spool file it cannot read as io', async () => {
    const result = await engine().scan(spoolMessage(join(dir, 'missing.eml'), 100), CONTEXT, AbortSignal.timeout(5_000));
    expect(result.outcome).toMatchObject({ status: 'error', error: 'io' });
  });
});
