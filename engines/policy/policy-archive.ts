/*
 * Archive listings without extraction: the file names an archive holds and whether it is
 * encrypted, read from the archive's own directory structures.
 *
 * Takes: the first bytes of an attachment (`head`), its last bytes (`tail`) and its size; the
 *   caller keeps no more than that (see policy.ts for the bounds).
 * Gives: the format, the entry names, whether any entry (or the directory itself) is encrypted,
 *   and whether the listing is complete; null when the bytes are not an archive this reads.
 * Formats:
 *   zip (PKWARE APPNOTE 6.3): the end-of-central-directory record (zip64 too) is found in the
 *     tail, every central directory entry is read (name, flag bit 0 "encrypted"), and each
 *     entry's local header is checked as well when it lies in the head or the tail. Data put
 *     before the archive (self-extractors) is allowed for, as unzip does. When the directory
 *     reaches before the tail, the local headers in the head are walked instead and the listing
 *     is marked incomplete.
 *   RAR 4 and 5: block headers are walked from the start while they lie in the head; encrypted
 *     headers (RAR 4 main-header flag, RAR 5 archive encryption header) and encrypted files
 *     (RAR 4 file flag, RAR 5 file encryption record) are reported.
 *   7z: the names sit in a header that is usually LZMA-compressed, so they are not listed; the
 *     archive counts as encrypted when the AES coder (06 F1 07 01) shows in the header at the
 *     end, which it always does with encrypted headers (7z -mhe). Files encrypted under a
 *     compressed but unencrypted header are not detected.
 */

export interface ArchiveListing {
  format: 'zip' | 'rar' | '7z';
  names: string[];
  encrypted: boolean;
  complete: boolean;
}

/** Where the kept bytes sit in the whole attachment. */
export interface Sample {
  head: Buffer;
  tail: Buffer;
  size: number;
}

const startsWith = (b: Buffer, magic: number[]) => magic.every((byte, i) => b[i] === byte);

export function listArchive(s: Sample): ArchiveListing | null {
  if (startsWith(s.head, [0x50, 0x4b, 0x03, 0x04]) || startsWith(s.head, [0x50, 0x4b, 0x05, 0x06])) return listZip(s);
  if (startsWith(s.head, [0x52, 0x61, 0x72, 0x21, 0x1a, 0x07, 0x01, 0x00])) return listRar5(s.head);
  if (startsWith(s.head, [0x52, 0x61, 0x72, 0x21, 0x1a, 0x07, 0x00])) return listRar4(s.head);
  if (startsWith(s.head, [0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c])) return list7z(s);
  return null;
}

/** Reads `length` bytes at an absolute offset of the attachment, from the head or the tail. */
function slice(s: Sample, offset: number, length: number): Buffer | null {
  if (offset < 0 || length < 0 || offset + length > s.size) return null;
  if (offset + length <= s.head.length) return s.head.subarray(offset, offset + length);
  const tailStart = s.size - s.tail.length;
  if (offset >= tailStart) return s.tail.subarray(offset - tailStart, offset - tailStart + length);
  return null;
}

const ZIP_LOCAL = 0x04034b50;
const ZIP_CENTRAL = 0x02014b50;
const ZIP_END = 0x06054b50;
const ZIP64_LOCATOR = 0x07064b50;
const ZIP64_END = 0x06064b50;
const ZIP_ENCRYPTED = 0x0001;
const ZIP_DATA_DESCRIPTOR = 0x0008;
const ZIP_UTF8 = 0x0800;

function zipName(raw: Buffer, flags: number): string {
  return raw.toString(flags & ZIP_UTF8 ? 'utf8' : 'latin1');
}

interface ZipDirectory { offset: number; size: number; entries: number; at: number }

/** The last end-of-central-directory record whose comment fits in the file. */
function findZipEnd(s: Sample): ZipDirectory | null {
  const tailStart = s.size - s.tail.length;
  const t = s.tail;
  for (let i = t.length - 22; i >= Math.max(0, t.length - 22 - 0xffff); i--) {
    if (t.readUInt32LE(i) !== ZIP_END || i + 22 + t.readUInt16LE(i + 20) > t.length) continue;
    const end = { entries: t.readUInt16LE(i + 10), size: t.readUInt32LE(i + 12), offset: t.readUInt32LE(i + 16), at: tailStart + i };
    if (end.entries !== 0xffff && end.size !== 0xffffffff && end.offset !== 0xffffffff) return end;
    const locator = slice(s, end.at - 20, 20);
    if (!locator || locator.readUInt32LE(0) !== ZIP64_LOCATOR) return null;
    const at = Number(locator.readBigUInt64LE(8));
    const z64 = slice(s, at, 56);
    if (!z64 || z64.readUInt32LE(0) !== ZIP64_END) return null;
    return { entries: Number(z64.readBigUInt64LE(32)), size: Number(z64.readBigUInt64LE(40)), offset: Number(z64.readBigUInt64LE(48)), at };
  }
  return null;
}

function listZip(s: Sample): ArchiveListing {
  const listing: ArchiveListing = { format: 'zip', names: [], encrypted: false, complete: false };
  const end = findZipEnd(s);
  const start = end ? end.at - end.size : -1;
  const directory = end ? slice(s, start, end.size) : null;
  if (!end || !directory) {
    walkZipLocalHeaders(s.head, listing);
    return listing;
  }
  // Bytes before the archive shift every offset the directory records.
  const shift = start - end.offset;
  let p = 0;
  for (let n = 0; n < end.entries; n++) {
    if (p + 46 > directory.length || directory.readUInt32LE(p) !== ZIP_CENTRAL) return listing;
    const flags = directory.readUInt16LE(p + 8);
    const nameLength = directory.readUInt16LE(p + 28);
    const next = p + 46 + nameLength + directory.readUInt16LE(p + 30) + directory.readUInt16LE(p + 32);
    if (next > directory.length) return listing;
    listing.names.push(zipName(directory.subarray(p + 46, p + 46 + nameLength), flags));
    if (flags & ZIP_ENCRYPTED) listing.encrypted = true;
    const local = slice(s, directory.readUInt32LE(p + 42) + shift, 30);
    if (local && local.readUInt32LE(0) === ZIP_LOCAL && local.readUInt16LE(6) & ZIP_ENCRYPTED) listing.encrypted = true;
    p = next;
  }
  listing.complete = true;
  return listing;
}

/** Local headers one after the other, as far as their sizes are known and the head reaches. */
function walkZipLocalHeaders(head: Buffer, listing: ArchiveListing): void {
  let p = 0;
  while (p + 30 <= head.length && head.readUInt32LE(p) === ZIP_LOCAL) {
    const flags = head.readUInt16LE(p + 6);
    const compressed = head.readUInt32LE(p + 18);
    const nameLength = head.readUInt16LE(p + 26);
    const nameEnd = p + 30 + nameLength;
    if (nameEnd > head.length) return;
    listing.names.push(zipName(head.subarray(p + 30, nameEnd), flags));
    if (flags & ZIP_ENCRYPTED) listing.encrypted = true;
    if (flags & ZIP_DATA_DESCRIPTOR && compressed === 0) return;
    p = nameEnd + head.readUInt16LE(p + 28) + compressed;
  }
}

const RAR4_MAIN = 0x73;
const RAR4_FILE = 0x74;
const RAR4_END = 0x7b;

function listRar4(head: Buffer): ArchiveListing {
  const listing: ArchiveListing = { format: 'rar', names: [], encrypted: false, complete: false };
  let p = 7;
  while (p + 7 <= head.length) {
    const type = head[p + 2];
    const flags = head.readUInt16LE(p + 3);
    const size = head.readUInt16LE(p + 5);
    if (size < 7) return listing;
    if (type === RAR4_END) { listing.complete = true; return listing; }
    if (type === RAR4_MAIN && flags & 0x0080) {
      // Every later header is encrypted: nothing more can be read without the password.
      listing.encrypted = true;
      return listing;
    }
    let data = flags & 0x8000 && p + 11 <= head.length ? head.readUInt32LE(p + 7) : 0;
    if (type === RAR4_FILE) {
      if (p + 32 > head.length) return listing;
      if (flags & 0x0004) listing.encrypted = true;
      const large = flags & 0x0100;
      if (large && p + 40 <= head.length) data += head.readUInt32LE(p + 32) * 2 ** 32;
      const nameAt = p + (large ? 40 : 32);
      const nameEnd = nameAt + head.readUInt16LE(p + 26);
      if (nameEnd > head.length) return listing;
      // With the unicode flag the name is "legacy name NUL packed unicode": the first part will do.
      const raw = head.subarray(nameAt, nameEnd);
      const zero = raw.indexOf(0);
      listing.names.push(raw.subarray(0, zero === -1 ? raw.length : zero).toString(flags & 0x0200 ? 'utf8' : 'latin1'));
    }
    p += size + data;
  }
  return listing;
}

/** RAR 5 variable-length integer: 7 bits a byte, low bits first. */
function vint(b: Buffer, p: number): { value: number; next: number } | null {
  let value = 0;
  for (let i = 0; i < 10 && p + i < b.length; i++) {
    value += (b[p + i] & 0x7f) * 2 ** (7 * i);
    if (!(b[p + i] & 0x80)) return { value, next: p + i + 1 };
  }
  return null;
}

const RAR5_FILE = 2;
const RAR5_ENCRYPTION = 4;
const RAR5_END = 5;
const RAR5_RECORD_ENCRYPTION = 1;

function listRar5(head: Buffer): ArchiveListing {
  const listing: ArchiveListing = { format: 'rar', names: [], encrypted: false, complete: false };
  let p = 8;
  while (p + 4 < head.length) {
    const size = vint(head, p + 4);
    if (!size || size.value === 0) return listing;
    const headerEnd = size.next + size.value;
    if (headerEnd > head.length) return listing;
    const type = vint(head, size.next);
    const flags = type && vint(head, type.next);
    if (!type || !flags) return listing;
    let q = flags.next;
    let extra = 0;
    let data = 0;
    if (flags.value & 0x01) { const v = vint(head, q); if (!v) return listing; extra = v.value; q = v.next; }
    if (flags.value & 0x02) { const v = vint(head, q); if (!v) return listing; data = v.value; q = v.next; }
    if (type.value === RAR5_ENCRYPTION) { listing.encrypted = true; return listing; }
    if (type.value === RAR5_END) { listing.complete = true; return listing; }
    if (type.value === RAR5_FILE) {
      const entry = readRar5File(head, q, headerEnd - extra, headerEnd);
      if (!entry) return listing;
      listing.names.push(entry.name);
      if (entry.encrypted) listing.encrypted = true;
    }
    p = headerEnd + data;
  }
  return listing;
}

function readRar5File(b: Buffer, p: number, extraStart: number, end: number): { name: string; encrypted: boolean } | null {
  const fileFlags = vint(b, p);
  if (!fileFlags) return null;
  let q = fileFlags.next;
  for (let i = 0; i < 2; i++) { const v = vint(b, q); if (!v) return null; q = v.next; } // unpacked size, attributes
  if (fileFlags.value & 0x02) q += 4; // mtime
  if (fileFlags.value & 0x04) q += 4; // data CRC32
  for (let i = 0; i < 2; i++) { const v = vint(b, q); if (!v) return null; q = v.next; } // compression, host OS
  const length = vint(b, q);
  if (!length || length.next + length.value > extraStart) return null;
  const name = b.subarray(length.next, length.next + length.value).toString('utf8');
  let encrypted = false;
  let r = extraStart;
  while (r < end) {
    const recordSize = vint(b, r);
    const recordType = recordSize && vint(b, recordSize.next);
    if (!recordSize || !recordType) break;
    if (recordType.value === RAR5_RECORD_ENCRYPTION) encrypted = true;
    r = recordSize.next + recordSize.value;
  }
  return { name, encrypted };
}

const SEVENZIP_AES = Buffer.from([0x06, 0xf1, 0x07, 0x01]);

function list7z(s: Sample): ArchiveListing {
  const listing: ArchiveListing = { format: '7z', names: [], encrypted: false, complete: false };
  if (s.head.length < 32) return listing;
  const at = 32 + Number(s.head.readBigUInt64LE(12));
  const header = slice(s, at, Number(s.head.readBigUInt64LE(20)));
  if (!header) return listing;
  // A coder is written as a flag byte whose low nibble is the id's length (4), then the id.
  for (let i = header.indexOf(SEVENZIP_AES); i > 0; i = header.indexOf(SEVENZIP_AES, i + 1)) {
    if ((header[i - 1] & 0x0f) === 4) listing.encrypted = true;
  }
  return listing;
}
