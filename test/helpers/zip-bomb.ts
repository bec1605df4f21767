/*
 * Zip archives written here (APPNOTE.TXT: local headers, data, central directory, end record;
 * deflate from node:zlib), among them archive bombs: a very high compression ratio, archives
 * nested deeper than a scanner descends, more entries than it counts.
 */
import { crc32, deflateRawSync } from 'node:zlib';

export interface ZipEntry {
  name: string;
  data: Buffer;
}

/** A zip of `entries`, each deflated. */
export function zip(entries: ZipEntry[]): Buffer {
  const locals: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name);
    const packed = deflateRawSync(e.data, { level: 9 });
    const crc = crc32(e.data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(8, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(packed.length, 18);
    local.writeUInt32LE(e.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    locals.push(local, name, packed);
    const dir = Buffer.alloc(46);
    dir.writeUInt32LE(0x02014b50, 0);
    dir.writeUInt16LE(20, 4);
    dir.writeUInt16LE(20, 6);
    dir.writeUInt16LE(8, 10);
    dir.writeUInt32LE(crc, 16);
    dir.writeUInt32LE(packed.length, 20);
    dir.writeUInt32LE(e.data.length, 24);
    dir.writeUInt16LE(name.length, 28);
    dir.writeUInt32LE(offset, 42);
    central.push(dir, name);
    offset += local.length + name.length + packed.length;
  }
  const dirSize = central.reduce((n, b) => n + b.length, 0);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(dirSize, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, ...central, end]);
}

/** One file of `size` zero bytes: a ratio near 1000:1. */
export function ratioBomb(size: number): Buffer {
  return zip([{ name: 'zeros.bin', data: Buffer.alloc(size) }]);
}

/** `inner` in `levels` zips, one inside the other. */
export function nestedZip(inner: ZipEntry, levels: number): Buffer {
  let entry = inner;
  for (let n = 0; n < levels; n++) entry = { name: `level-${n}.zip`, data: zip([entry]) };
  return entry.data;
}

/** `count` small files, the last one `last`. */
export function manyFilesZip(count: number, last: ZipEntry): Buffer {
  return zip([...Array.from({ length: count - 1 }, (_, n) => ({ name: `f${n}.txt`, data: Buffer.from(`file ${n}`) })), last]);
}
