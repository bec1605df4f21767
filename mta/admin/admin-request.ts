/*
 * What every admin resource shares: the request as a route sees it, the answer it gives, and the
 * checks on a JSON body's fields.
 *
 * Takes: a request whose body admin-server.ts has already read and parsed (at most 16 KB, a JSON
 *   object). Gives: `AdminRoute`, the shape of one resource's handler (null when the path is not
 *   its own), and `BadRequest`, which the server turns into 400 with the message.
 * Sites are named as `ichidan egress` lists them ("mx:mx1.example.net", "site:google", ...).
 */
import { duration } from '../../base/base-config.js';
import type { Config } from '../mta-config-schema.js';

export interface AdminRequest {
  method: string;
  /** The URL without its query. */
  path: string;
  query: URLSearchParams;
  body: Record<string, unknown>;
}

/** JSON with a status, or text in a type of its own (the metrics). */
export type AdminAnswer = [status: number, body: unknown] | { status: number; contentType: string; text: string };

export type AdminRoute<Target> = (req: AdminRequest, target: Target) => Promise<AdminAnswer | null>;

export class BadRequest extends Error {}

export function text(body: Record<string, unknown>, key: string, max = 300): string | undefined {
  const v = body[key];
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string' || v.length > max) throw new BadRequest(`"${key}" must be a string of at most ${max} characters`);
  return v.trim();
}

export function forMs(body: Record<string, unknown>): number | undefined {
  if (body.for === undefined) return undefined;
  const parsed = duration.safeParse(body.for);
  if (!parsed.success || parsed.data <= 0) throw new BadRequest('"for" must be a duration such as "30m" or "4h"');
  return parsed.data;
}

const SITE_KEY = /^(mx|route|site|domain|addr):\S+$/;

/** A tenant the config knows (or `_relay`), and a site key in the form `ichidan egress` shows. */
export function checkScope(config: Pick<Config, 'tenants'>, tenant: string | undefined, site: string | undefined): void {
  if (tenant !== undefined && tenant !== '_relay' && !(tenant in config.tenants)) {
    throw new BadRequest(`no tenant "${tenant}" (tenants: ${['_relay', ...Object.keys(config.tenants)].join(', ')})`);
  }
  if (site !== undefined && !SITE_KEY.test(site)) throw new BadRequest(`"${site}" is not a site: sites look like "mx:mx1.example.net", "site:NAME", "route:host:port" (see ichidan egress)`);
}

/**
 * What a queue action applies to ({message} | {tenant?, site?}), checked: one message, or a
 * tenant and/or a site the config knows.
 */
export function actionScope(config: Pick<Config, 'tenants'>, body: Record<string, unknown>): { message?: string; tenant?: string; site?: string } {
  const message = text(body, 'message', 64);
  const tenant = text(body, 'tenant', 64);
  const site = text(body, 'site');
  if (message !== undefined && (tenant !== undefined || site !== undefined)) throw new BadRequest('give a message, or a tenant and/or a site, not both');
  if (message === undefined && tenant === undefined && site === undefined) throw new BadRequest('give a message, a tenant or a site');
  checkScope(config, tenant, site);
  return { message, tenant, site };
}
