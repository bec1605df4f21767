/*
 * Messages padded past what scanners handle: a huge header block, very many header fields, very
 * many MIME parts, deep MIME nesting (multiparts and attached messages), each carrying a payload
 * part (a blocked .exe, EICAR, an archive) that a scanner which gives up would let through.
 */
import { EICAR } from './engine-contract.js';

const CRLF = '\r\n';

export interface Attachment {
  name: string;
  type?: string;
  body: Buffer | string;
}

export const EXE: Attachment = { name: 'setup.exe', type: 'application/octet-stream', body: Buffer.from('MZ\x90\x00\x03\x00\x00\x00padding') };
export const EICAR_FILE: Attachment = { name: 'eicar.com', type: 'application/octet-stream', body: EICAR };

const HEAD = ['From: Mallory <mallory@sender.test>', 'To: bob@example.test', 'Date: Wed, 25 Nov 2026 10:00:00 +0000', 'MIME-Version: 1.0'];

export function attachmentPart(a: Attachment): string {
  const b64 = Buffer.from(a.body).toString('base64').replace(/.{76}/g, `$&${CRLF}`);
  return [`Content-Type: ${a.type ?? 'application/octet-stream'}; name="${a.name}"`, `Content-Disposition: attachment; filename="${a.name}"`,
    'Content-Transfer-Encoding: base64', '', b64, ''].join(CRLF);
}

/** A multipart/mixed message: a text part, `padding` more text parts, then the attachment. */
export function attachmentMail(a: Attachment, opts: { subject?: string; extraHeaders?: string[]; padding?: number } = {}): string {
  const b = 'outer-boundary';
  const parts = ['Content-Type: text/plain' + CRLF + CRLF + 'Please see the attachment.' + CRLF];
  for (let n = 0; n < (opts.padding ?? 0); n++) parts.push(`Content-Type: text/plain${CRLF}${CRLF}pad ${n}${CRLF}`);
  parts.push(attachmentPart(a));
  return [...HEAD, `Subject: ${opts.subject ?? 'Attachment'}`, ...(opts.extraHeaders ?? []), `Content-Type: multipart/mixed; boundary="${b}"`, '',
    ...parts.map((p) => `--${b}${CRLF}${p}`), `--${b}--`, ''].join(CRLF);
}

/**
 * Slow to judge, within every structure limit: `count` harmless base64 attachments of `size` bytes
 * each, every one decoded and sampled by the attachment policy (about 100 ms for 400 of 20 KB).
 */
export function slowMail(count = 400, size = 20_000): string {
  const b = 'slow-boundary';
  const parts = Array.from({ length: count }, (_, n) => attachmentPart({ name: `scan-${n}.bin`, body: Buffer.alloc(size, n % 251) }));
  return [...HEAD, 'Subject: Many attachments', `Content-Type: multipart/mixed; boundary="${b}"`, '', ...parts.map((p) => `--${b}${CRLF}${p}`), `--${b}--`, ''].join(CRLF);
}

/** `count` header fields of `length` bytes each in front of the message's own. */
export function paddingHeaders(count: number, length = 60): string[] {
  return Array.from({ length: count }, (_, n) => `X-Padding-${n}: ${'p'.repeat(length)}`);
}

/**
 * The attachment inside `levels` containers: multipart/mixed, or every other level an attached
 * message (message/rfc822, as an attachment, the way mail clients forward).
 */
export function nestedMail(a: Attachment, levels: number, kind: 'multipart' | 'rfc822' = 'multipart'): string {
  let entity = attachmentPart(a);
  for (let n = 0; n < levels; n++) {
    if (kind === 'rfc822' && n % 2 === 1) {
      entity = ['Content-Type: message/rfc822', 'Content-Disposition: attachment; filename="forwarded.eml"', '', ...HEAD, `Subject: Fwd ${n}`, entity].join(CRLF);
    } else {
      entity = [`Content-Type: multipart/mixed; boundary="level-${n}"`, '', `--level-${n}`, entity, `--level-${n}--`, ''].join(CRLF);
    }
  }
  return [...HEAD, 'Subject: Nested', entity].join(CRLF);
}
