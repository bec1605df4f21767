/*
 * Relay policy and tenant resolution.
 *
 * Who may send where: an authenticated user or a client on a trusted network (global
 * `trustedNetworks` or a tenant's `networks`) may relay anywhere; anyone else only to a domain
 * some tenant hosts, and never with sender-specified routing in the local part (`user%other@`,
 * `other!user@`), which a downstream host could turn into a relay. Source routes and quoted
 * local parts holding "@" never get here: smtp-server strips the first (RFC 5321 4.1.2) and
 * refuses the second.
 *
 * Whose mail it is (the tenant): the AUTH user's tenant (a Dovecot login's by its domain,
 * `auth.backend.domains`, else `auth.backend.tenant`), else the tenant listing the client's
 * network, else the tenant hosting the recipient's domain; mail relayed by a trusted network that
 * no tenant claims goes to the `_relay` tenant. Each recipient carries its own tenant, so a
 * message for several tenants is split per tenant at queue time.
 */
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { domainToASCII } from 'node:url';
import type { Config } from '../mta-config-schema.js';
import { REPLIES, type SmtpReply } from '../../base/base-reply.js';

export const RELAY_TENANT = '_relay';

export interface ClientContext {
  address: string;
  authUser: string | null;
  role: 'mx' | 'submission' | 'proxy';
}

export type RecipientDecision =
  | { ok: true; tenant: string; domain: string; address: string }
  | { ok: false; reply: SmtpReply };

export function blockListOf(networks: readonly string[]): BlockList {
  const list = new BlockList();
  for (const n of networks) {
    const [addr, bits] = n.split('/');
    const family = isIPv6(addr) ? 'ipv6' : 'ipv4';
    if (bits === undefined) list.addAddress(addr, family);
    else list.addSubnet(addr, Number(bits), family);
  }
  return list;
}

export function inList(list: BlockList, address: string): boolean {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
  const a = mapped ?? address;
  if (isIPv4(a)) return list.check(a, 'ipv4');
  if (isIPv6(a)) return list.check(a, 'ipv6');
  return false;
}

/** Lower-case ASCII form of a domain (IDNs to punycode, trailing dot dropped); '' if it is not a domain. */
export function normalizeDomain(domain: string): string {
  const d = domain.trim().replace(/\.$/, '');
  if (d.startsWith('[')) return d.toLowerCase();
  return domainToASCII(d).toLowerCase();
}

export function splitAddress(address: string): { local: string; domain: string } | null {
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) return null;
  return { local: address.slice(0, at), domain: address.slice(at + 1) };
}

/** The tenant of a login Dovecot authenticated: by the login's domain, else the backend's tenant. */
export function tenantOfLogin(login: string, backend: Config['auth']['backend']): string | undefined {
  if (backend.type !== 'dovecot') return undefined;
  const at = login.lastIndexOf('@');
  const byDomain = at >= 0 ? backend.domains[normalizeDomain(login.slice(at + 1))] : undefined;
  return byDomain ?? backend.tenant;
}

export class Policy {
  readonly #trusted: BlockList;
  readonly #tenantNetworks: Array<{ tenant: string; list: BlockList }>;
  readonly #domainTenant = new Map<string, string>();
  readonly #userTenant = new Map<string, string>();
  readonly #postmaster: string;

  constructor(config: Config) {
    this.#postmaster = config.postmaster ?? `postmaster@${config.hostname}`;
    this.#trusted = blockListOf(config.trustedNetworks);
    this.#tenantNetworks = Object.entries(config.tenants)
      .filter(([, t]) => t.networks.length > 0)
      .map(([tenant, t]) => ({ tenant, list: blockListOf(t.networks) }));
    for (const [tenant, t] of Object.entries(config.tenants)) {
      for (const d of t.domains) this.#domainTenant.set(normalizeDomain(d), tenant);
    }
    for (const u of config.users) this.#userTenant.set(u.name, u.tenant);
    this.#backend = config.auth.backend;
  }

  readonly #backend: Config['auth']['backend'];

  tenantOfUser(user: string): string | undefined {
    return this.#userTenant.get(user) ?? tenantOfLogin(user, this.#backend);
  }

  tenantOfClient(address: string): string | undefined {
    return this.#tenantNetworks.find((t) => inList(t.list, address))?.tenant;
  }

  tenantOfDomain(domain: string): string | undefined {
    return this.#domainTenant.get(domain);
  }

  /** May this client relay to any domain without AUTH? */
  isTrusted(address: string): boolean {
    return inList(this.#trusted, address) || this.tenantOfClient(address) !== undefined;
  }

  /** Checked at MAIL FROM: the submission listener serves only authenticated or trusted clients. */
  checkSender(client: ClientContext): SmtpReply | null {
    if (client.role === 'submission' && !client.authUser && !this.isTrusted(client.address)) return REPLIES.authRequired;
    return null;
  }

  checkRecipient(address: string, client: ClientContext): RecipientDecision {
    // The bare <postmaster> must be accepted from anyone (RFC 5321 4.5.1).
    if (address.toLowerCase() === 'postmaster') {
      const p = splitAddress(this.#postmaster)!;
      const domain = normalizeDomain(p.domain);
      return { ok: true, tenant: this.tenantOfDomain(domain) ?? RELAY_TENANT, domain, address: `${p.local}@${domain}` };
    }
    const parts = splitAddress(address);
    if (!parts) return { ok: false, reply: REPLIES.relayDenied };
    const domain = normalizeDomain(parts.domain);
    if (!domain) return { ok: false, reply: REPLIES.badRecipient };
    const normalized = `${parts.local}@${domain}`;
    const hostedBy = this.tenantOfDomain(domain);
    const authorized = client.authUser !== null || this.isTrusted(client.address);
    if (authorized) {
      const tenant = (client.authUser ? this.tenantOfUser(client.authUser) : undefined)
        ?? this.tenantOfClient(client.address) ?? hostedBy ?? RELAY_TENANT;
      return { ok: true, tenant, domain, address: normalized };
    }
    if (!hostedBy) return { ok: false, reply: REPLIES.relayDenied };
    if (/[%!@]/.test(parts.local)) return { ok: false, reply: REPLIES.routingDenied };
    return { ok: true, tenant: hostedBy, domain, address: normalized };
  }
}
