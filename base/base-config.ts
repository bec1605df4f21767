/*
 * Building blocks of the configuration schema shared by every section (durations, sizes, names,
 * addresses), so that `engines/` can describe its own settings with the same vocabulary.
 */
import { isIP } from 'node:net';
import { z } from 'zod';

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;
const DURATION_UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "250ms", "30s", "5m", "4h", "5d" (or a number of milliseconds) → milliseconds. */
export const duration = z.union([
  z.number().int().nonnegative(),
  z.string().regex(DURATION, 'a duration such as "500ms", "30s", "5m", "4h" or "5d"'),
]).transform((v) => {
  if (typeof v === 'number') return v;
  const m = DURATION.exec(v)!;
  return Math.round(Number(m[1]) * DURATION_UNIT_MS[m[2]]);
});

const RATE = /^(\d+)\s*\/\s*(\d*)\s*(ms|s|m|h|d)$/;

/** "600/m", "20/s", "5000/h", "100/10s" → { count, perMs }. */
export const rate = z.string().regex(RATE, 'a rate such as "600/m", "20/s" or "100/10s"').transform((v) => {
  const m = RATE.exec(v)!;
  return { count: Number(m[1]), perMs: (m[2] === '' ? 1 : Number(m[2])) * DURATION_UNIT_MS[m[3]] };
}).refine((r) => r.count > 0 && r.perMs > 0, 'a rate above zero');

const SIZE = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB)?$/i;
const SIZE_UNIT: Record<string, number> = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 };

/** "512KB", "25MB" (or a number of bytes) → bytes. */
export const size = z.union([
  z.number().int().positive(),
  z.string().regex(SIZE, 'a size such as "512KB", "25MB" or a number of bytes'),
]).transform((v) => {
  if (typeof v === 'number') return v;
  const m = SIZE.exec(v)!;
  return Math.round(Number(m[1]) * SIZE_UNIT[(m[2] ?? 'B').toUpperCase()]);
});

export const hostname = z.string().regex(/^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$/i,
  'a host name such as "mx.example.com"');

export const domain = z.string().transform((d) => d.toLowerCase().replace(/\.$/, ''))
  .pipe(z.string().regex(/^(\*|\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)$/,
    'a domain name such as "example.com" (or ".example.com" for its subdomains, or "*")'));

export const ipAddress = z.string().refine((s) => isIP(s) !== 0, 'an IPv4 or IPv6 address');

export const cidr = z.string().refine((s) => {
  const [addr, bits, extra] = s.split('/');
  if (extra !== undefined || isIP(addr) === 0) return false;
  if (bits === undefined) return true;
  const max = isIP(addr) === 4 ? 32 : 128;
  return /^\d+$/.test(bits) && Number(bits) <= max;
}, 'an address or network such as "127.0.0.1" or "10.0.0.0/8"');

export const port = z.number().int().min(1).max(65535);

/** host:port where the port is optional ("127.0.0.1:5353", "[::1]:53", "127.0.0.1"). */
export const dnsServer = z.string().refine((s) => {
  const m = /^(?:\[([^\]]+)\]|([^:]+))(?::(\d+))?$/.exec(s);
  return !!m && isIP(m[1] ?? m[2]) !== 0 && (m[3] === undefined || (Number(m[3]) >= 1 && Number(m[3]) <= 65535));
}, 'a resolver address such as "127.0.0.1:5353"');

