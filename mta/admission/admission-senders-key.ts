/*
 * The names of known-sender entries: what an entry is keyed by, and the forms an operator types.
 *
 * Takes: a client address and the prefixes (admission.senders.ipv4Prefix / ipv6Prefix), or the
 *   text of a KEY on the command line or in the admin API.
 * Gives: `{ kind, key }` — a client network is keyed by its prefix as the anvil keys clients
 *   (ingress-anvil.ts `clientKey`: "192.0.2.0/24", "2001:db8:0:0:0:0:0:0/64"), a resolver by its
 *   own address, a user by the AUTH name as given, a domain in lower case without a final dot.
 * KEY forms: an address or a network ("192.0.2.7" and "192.0.2.0/24" both name the /24; a network
 *   with another prefix length is refused, naming the setting), `network:…`, `user:NAME`,
 *   `domain:example.com`, `resolver:ADDR`. A bad KEY is a message saying which forms exist.
 */
import { isIP } from 'node:net';
import { clientKey } from '../ingress/ingress-anvil.js';
import type { SendersConfig } from './admission-config.js';

export type SenderKind = 'network' | 'user' | 'domain' | 'resolver';
export const SENDER_KINDS: readonly SenderKind[] = ['network', 'user', 'domain', 'resolver'];

export interface SenderRef {
  kind: SenderKind;
  key: string;
}

type Prefixes = Pick<SendersConfig, 'ipv4Prefix' | 'ipv6Prefix'>;

export const KEY_FORMS = 'an address or network (192.0.2.7 means its network), user:NAME, domain:example.com or resolver:ADDR';

/** The network a client address is learned and judged under. */
export function networkKey(address: string, prefixes: Prefixes): string {
  return clientKey(address, prefixes.ipv6Prefix, prefixes.ipv4Prefix);
}

/** A resolver is one host: its address, IPv6 written out in full as the anvil writes it. */
export function resolverKey(address: string): string {
  return clientKey(address, 128, 32).replace(/\/128$/, '');
}

const DOMAIN = /^(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)(\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)*$/;

export function domainKey(domain: string): string | null {
  const d = domain.trim().toLowerCase().replace(/\.$/, '');
  return DOMAIN.test(d) ? d : null;
}

/** How an entry is shown and typed: a network as itself, the others as "kind:key". */
export function displayKey(ref: SenderRef): string {
  return ref.kind === 'network' ? ref.key : `${ref.kind}:${ref.key}`;
}

/** The entry an operator's KEY names, or the reason it names none. */
export function parseSenderKey(text: string, prefixes: Prefixes): SenderRef | { error: string } {
  const t = text.trim();
  const colon = t.indexOf(':');
  const head = colon > 0 ? t.slice(0, colon).toLowerCase() : '';
  const rest = t.slice(colon + 1);
  if (head === 'user') {
    if (rest.length === 0 || rest.length > 320 || /[\x00-\x1f\x7f]/.test(rest)) return { error: `"${t}": a user name must be 1 to 320 printable characters` };
    return { kind: 'user', key: rest };
  }
  if (head === 'domain') {
    const key = domainKey(rest);
    return key ? { kind: 'domain', key } : { error: `"${rest}" is not a domain name` };
  }
  if (head === 'resolver') {
    return isIP(rest) ? { kind: 'resolver', key: resolverKey(rest) } : { error: `"${rest}" is not an IP address (resolver:ADDR)` };
  }
  const net = head === 'network' ? rest : t;
  const slash = net.lastIndexOf('/');
  const address = slash >= 0 ? net.slice(0, slash) : net;
  const family = isIP(address);
  if (family === 0) return { error: `"${t}" is not a sender key: use ${KEY_FORMS}` };
  if (slash >= 0) {
    const bits = net.slice(slash + 1);
    const want = family === 4 ? prefixes.ipv4Prefix : prefixes.ipv6Prefix;
    if (bits !== String(want)) {
      return { error: `"${t}": IPv${family} senders are kept per /${want} (admission.senders.ipv${family}Prefix); give an address or a /${want}` };
    }
  }
  return { kind: 'network', key: networkKey(address, prefixes) };
}
