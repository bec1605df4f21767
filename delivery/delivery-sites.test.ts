import { describe, expect, it } from 'vitest';
import { parseConfig } from '../mta/index.js';
import type { Router, RouteDecision } from './delivery-route.js';
import { hostMatches, SiteDirectory } from './delivery-sites.js';

const mx = (...names: string[]): RouteDecision => ({ kind: 'hops', via: 'mx', hops: names.map((name) => ({ name, addresses: ['127.0.0.9'], port: 25, protocol: 'smtp' as const })) });

function sites(routes: Record<string, RouteDecision>, delivery: Record<string, unknown> = {}) {
  let lookups = 0;
  let now = 0;
  const router = { route: async (d: string) => { lookups++; return routes[d] ?? { kind: 'fail', permanent: true, status: '5.1.2', reason: 'nx' }; } } as unknown as Router;
  const config = parseConfig({ delivery } as never, 'test');
  const s = new SiteDirectory(config, router, () => now);
  return { s, lookups: () => lookups, advance: (ms: number) => { now += ms; } };
}

describe('destination sites', () => {
  it('matches host patterns', () => {
    expect(hostMatches('*.google.com', 'aspmx.l.google.com')).toBe(true);
    expect(hostMatches('*.google.com', 'google.com')).toBe(false);
    expect(hostMatches('*.google.com', 'evilgoogle.com')).toBe(false);
    expect(hostMatches('MX.Example.net.', 'mx.example.net')).toBe(true);
  });

  it('groups domains by their MX host set, by configured patterns, and gives failures a site of their own', async () => {
    const { s } = sites({
      'one.test': mx('mx2.host.test', 'mx1.host.test'),
      'two.test': mx('mx1.host.test', 'mx2.host.test'),
      'three.test': mx('mx1.other.test'),
      'g1.test': mx('aspmx.l.google.com', 'alt1.aspmx.l.google.com'),
      'g2.test': mx('alt2.aspmx.l.google.com'),
      'pinned.test': mx('mx1.host.test'),
    }, { sites: { google: { mx: ['*.google.com'], maxConnections: 7 }, pinned: { domains: ['pinned.test', '*.pinned.test'] } } });
    const key = async (d: string) => (await s.route(d)).site.key;
    expect(await key('one.test')).toBe('mx:mx1.host.test,mx2.host.test');
    expect(await key('two.test')).toBe(await key('one.test'));
    expect(await key('three.test')).toBe('mx:mx1.other.test');
    expect(await key('g1.test')).toBe('site:google');
    expect(await key('g2.test')).toBe('site:google');
    expect(await key('pinned.test')).toBe('site:pinned');
    expect(await key('nowhere.test')).toBe('domain:nowhere.test');
    expect((await s.route('g1.test')).site.limits.maxConnections).toBe(7);
    expect((await s.route('three.test')).site.limits).toEqual({ maxConnections: 20, initialConnections: 5, messageRate: undefined });
  });

  it('answers from its cache for a minute (failures for a few seconds) and looks up once for concurrent askers', async () => {
    const { s, lookups, advance } = sites({ 'one.test': mx('mx1.host.test') });
    await Promise.all([s.route('one.test'), s.route('one.test'), s.site('one.test')]);
    expect(lookups()).toBe(1);
    expect(s.site('one.test')).not.toBeInstanceOf(Promise);
    advance(59_000);
    await s.route('one.test');
    expect(lookups()).toBe(1);
    advance(2_000);
    await s.route('one.test');
    expect(lookups()).toBe(2);
    await s.route('nx.test');
    advance(6_000);
    await s.route('nx.test');
    expect(lookups()).toBe(4);
  });
});
