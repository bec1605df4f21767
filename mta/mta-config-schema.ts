/*
 * The configuration schema: the one source of truth for what an Ichidan YAML file may say.
 *
 * Every object is strict (an unknown key is an error naming its path), every field carries its
 * default beside it, and durations ("30s", "5m", "4h", "5d") and sizes ("25MB") are parsed here so
 * the rest of the process only ever sees milliseconds and bytes. The TypeScript types of the
 * running configuration are derived from this schema (`Config`), never written by hand.
 *
 * Each stage owns its sections (ingress/ingress-config.ts: listeners, tls, limits, auth, users,
 * trustedNetworks; admin/admin-config.ts; proxy/proxy-config.ts; queue/queue-config.ts;
 * queue/accept/accept-config.ts: the message limits; delivery/delivery-config.ts;
 * engines/engines-config.ts; queue/cluster/cluster-config.ts; admission/admission-config.ts). This file assembles them, with the few settings of the process
 * itself and the tenants (whose record holds other stages' sections), and checks what spans
 * sections: names that must refer to something defined elsewhere, ports used twice.
 */
import { z } from 'zod';
import { engineSchema, scanningSchema, tenantScanningSchema } from '../engines/engines-config.js';
import { cidr, domain, duration, hostname, size } from '../base/base-config.js';
import { deliverySchema, dnsSchema, routesSchema } from '../delivery/delivery-config.js';
import { queueSchema, tenantEgressSchema } from '../queue/queue-config.js';
import { suppressionSchema, tenantSuppressionSchema } from '../queue/queue-suppression-config.js';
import { tenantDkimSchema } from '../queue/accept/accept-dkim-config.js';
import { proxySchema } from './proxy/proxy-config.js';
import { adminSchema } from './admin/admin-config.js';
import { clusterSchema } from '../queue/cluster/cluster-config.js';
import { admissionSchema } from './admission/admission-config.js';
import { authSchema, limitsSchema, listenersSchema, tlsSchema, trustedNetworksSchema, usersSchema } from './ingress/ingress-config.js';
import { recipientsSchema } from './ingress/ingress-recipients-config.js';
import { recipientsIssues } from './ingress/ingress-recipients-check-config.js';

export { duration, size };

const tenant = z.strictObject({
  /** Domains this tenant hosts: the MX listener accepts mail for them. */
  domains: z.array(domain).default([]),
  /** Client networks (MSAs of this tenant) that may relay without AUTH. */
  networks: z.array(cidr).default([]),
  /** The engines this tenant's mail goes through and its verdict overrides (see `scanning`). */
  scanning: tenantScanningSchema.optional(),
  /** How this tenant's outbound mail is scheduled: its share, its caps, its source addresses. */
  egress: tenantEgressSchema,
  /** Recipient validation at RCPT for this tenant's domains (absent: every local part is accepted). */
  recipients: recipientsSchema.optional(),
  /** This tenant's own suppression settings, over the global `suppression` (any of its keys). */
  suppression: tenantSuppressionSchema,
  /** The keys that DKIM-sign the mail this tenant sends, by From: domain (queue/accept/accept-dkim-config.ts). */
  dkim: tenantDkimSchema,
});

export const configSchema = z.strictObject({
  /** The name this MTA gives in its greeting, its Received headers and its EHLO. */
  hostname: hostname.default('localhost'),
  /** Where mail for the bare `<postmaster>` recipient goes (RFC 5321 4.5.1); default postmaster@hostname. */
  postmaster: z.email('an address such as "postmaster@example.com"').optional(),
  /** Spool, queue database and generated certificate live under this folder (relative: to the config file's folder). */
  dataDir: z.string().min(1).default('./var'),
  log: z.strictObject({
    level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    /** Append the log to this file instead of writing it on stdout (journald's way); reopened on SIGUSR2, for logrotate. */
    file: z.string().min(1).optional(),
  }).prefault({}),
  dns: dnsSchema,
  tls: tlsSchema,
  listeners: listenersSchema,
  limits: limitsSchema,
  auth: authSchema,
  trustedNetworks: trustedNetworksSchema,
  users: usersSchema,
  tenants: z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]*$/i, 'a tenant name of letters, digits, "-" and "_"'), tenant).default({}),
  queue: queueSchema,
  /** Per-tenant suppression of hard-bounced recipients: the defaults each tenant's `suppression` overrides. */
  suppression: suppressionSchema,
  delivery: deliverySchema,
  routes: routesSchema,
  admin: adminSchema,
  proxy: proxySchema,
  /** Nodes sharing limits and operator state through Redis; workers on this machine. */
  cluster: clusterSchema,
  /** Known senders first under overload: learning, pressure levels, admission by level, DNS steering. */
  admission: admissionSchema,
  /** Scanning engines, run in parallel on every message before the reply to DATA (empty: no scanning). */
  engines: z.array(engineSchema).default([]),
  /** How the engines' results make one verdict. */
  scanning: scanningSchema.prefault({}),
}).superRefine((cfg, ctx) => {
  const engineNames = new Set<string>();
  cfg.engines.forEach((e, i) => {
    if (engineNames.has(e.name)) ctx.addIssue({ code: 'custom', path: ['engines', i, 'name'], message: `another engine is already named "${e.name}"` });
    engineNames.add(e.name);
    if (e.type === 'mailauth' && cfg.dns.servers.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['engines', i, 'type'], message: 'sender authentication needs DNS: set dns.servers' });
    }
  });
  for (const [name, t] of Object.entries(cfg.tenants)) {
    t.scanning?.engines?.forEach((e, i) => {
      if (!engineNames.has(e)) ctx.addIssue({ code: 'custom', path: ['tenants', name, 'scanning', 'engines', i], message: `no engine named "${e}" (engines: ${[...engineNames].join(', ') || 'none'})` });
    });
  }
  const owner = new Map<string, string>();
  for (const [name, t] of Object.entries(cfg.tenants)) {
    t.domains.forEach((d, i) => {
      const prev = owner.get(d);
      if (prev !== undefined) ctx.addIssue({ code: 'custom', path: ['tenants', name, 'domains', i], message: `domain "${d}" is already hosted by tenant "${prev}"` });
      owner.set(d, name);
    });
  }
  const signer = new Map<string, string>();
  for (const [name, t] of Object.entries(cfg.tenants)) {
    const selectors = new Set<string>();
    t.dkim.forEach((k, i) => {
      const id = `${k.selector}._domainkey.${k.domain}`;
      if (selectors.has(id)) ctx.addIssue({ code: 'custom', path: ['tenants', name, 'dkim', i, 'selector'], message: `${id} is already configured above` });
      selectors.add(id);
      const prev = signer.get(k.domain);
      if (prev !== undefined && prev !== name) ctx.addIssue({ code: 'custom', path: ['tenants', name, 'dkim', i, 'domain'], message: `domain "${k.domain}" is already signed for by tenant "${prev}"` });
      signer.set(k.domain, name);
    });
  }
  for (const [name, t] of Object.entries(cfg.tenants)) {
    const pool = t.egress.sourcePool;
    if (pool !== undefined && !(pool in cfg.delivery.sourcePools)) {
      ctx.addIssue({ code: 'custom', path: ['tenants', name, 'egress', 'sourcePool'], message: `no source pool "${pool}" (delivery.sourcePools: ${Object.keys(cfg.delivery.sourcePools).join(', ') || 'none'})` });
    }
  }
  for (const [name, t] of Object.entries(cfg.tenants)) {
    if (t.recipients) for (const i of recipientsIssues(t.recipients, t.domains)) ctx.addIssue({ code: 'custom', path: ['tenants', name, 'recipients', ...i.path], message: i.message });
  }
  if (Array.isArray(cfg.proxy.scan)) {
    cfg.proxy.scan.forEach((t, i) => {
      if (!(t in cfg.tenants)) ctx.addIssue({ code: 'custom', path: ['proxy', 'scan', i], message: `no tenant "${t}" (tenants: ${Object.keys(cfg.tenants).join(', ') || 'none'})` });
    });
  }
  const backend = cfg.auth.backend;
  if (backend.type === 'dovecot') {
    const noTenant = (t: string) => `no tenant "${t}" (tenants: ${Object.keys(cfg.tenants).join(', ') || 'none'})`;
    if (backend.tenant !== undefined && !(backend.tenant in cfg.tenants)) ctx.addIssue({ code: 'custom', path: ['auth', 'backend', 'tenant'], message: noTenant(backend.tenant) });
    for (const [d, t] of Object.entries(backend.domains)) {
      if (!(t in cfg.tenants)) ctx.addIssue({ code: 'custom', path: ['auth', 'backend', 'domains', d], message: noTenant(t) });
    }
    if (backend.tenant === undefined && Object.keys(backend.domains).length === 0) {
      ctx.addIssue({ code: 'custom', path: ['auth', 'backend', 'tenant'], message: 'say whose mail a Dovecot login sends: a tenant, or tenants by the login\'s domain (auth.backend.domains)' });
    }
    if (cfg.users.length > 0) ctx.addIssue({ code: 'custom', path: ['users'], message: 'with auth.backend dovecot, Dovecot checks every login: give these users to Dovecot instead' });
  }
  cfg.users.forEach((u, i) => {
    if (!(u.tenant in cfg.tenants)) ctx.addIssue({ code: 'custom', path: ['users', i, 'tenant'], message: `no tenant "${u.tenant}" (tenants: ${Object.keys(cfg.tenants).join(', ') || 'none'})` });
  });
  if (cfg.admin.port !== undefined && cfg.admin.token === undefined) {
    ctx.addIssue({ code: 'custom', path: ['admin', 'token'], message: 'admin.port needs admin.token: any local user (and any web page the operator opens) can reach a loopback port' });
  }
  if (cfg.cluster.workers !== 1 && cfg.cluster.redis === undefined) {
    ctx.addIssue({ code: 'custom', path: ['cluster', 'workers'], message: 'more than one worker shares its limits through Redis: set cluster.redis (or workers: 1)' });
  }
  cfg.admission.listeners?.forEach((n, i) => {
    if (!cfg.listeners.some((l) => l.name === n)) ctx.addIssue({ code: 'custom', path: ['admission', 'listeners', i], message: `no listener named "${n}" (listeners: ${cfg.listeners.map((l) => l.name).join(', ')})` });
  });
  const seen = new Set<string>();
  cfg.listeners.forEach((l, i) => {
    const key = `${l.address}:${l.port}`;
    if (l.port !== 0 && seen.has(key)) ctx.addIssue({ code: 'custom', path: ['listeners', i, 'port'], message: `${key} is used by another listener` });
    seen.add(key);
  });
});

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
export type { ListenerConfig } from './ingress/ingress-config.js';
export type TenantConfig = Config['tenants'][string];
