import { describe, expect, it } from 'vitest';
import { parseConfig } from '../mta/mta-config.js';
import { createResolver, findStaticRoute, reverseName, Router } from './delivery-route.js';

const routes = parseConfig({
  routes: {
    'exact.test': { host: '127.0.0.2', port: 2525 },
    '.parent.test': { host: '127.0.0.3' },
    'named.test': { host: 'mx.named.test' },
    'held.test': { hold: true },
    '*': { host: '127.0.0.4', protocol: 'lmtp', port: 24 },
  },
}).routes;

describe('static routes', () => {
  it.each([
    ['exact.test', '127.0.0.2'],
    ['a.b.parent.test', '127.0.0.3'],
    ['parent.test', '127.0.0.4'],
    ['other.test', '127.0.0.4'],
  ])('%s → %s', (domain, host) => {
    const r = findStaticRoute(routes, domain);
    expect(r && 'host' in r ? r.host : null).toBe(host);
  });

  it('never asks any resolver when dns.servers is empty', async () => {
    const config = parseConfig({ routes: { 'named.test': { host: 'mx.named.test' }, 'held.test': { hold: true } } });
    expect(createResolver(config)).toBeNull();
    const router = new Router(config, null);
    expect(await router.route('held.test')).toEqual({ kind: 'hold' });
    expect(await router.route('named.test')).toMatchObject({ kind: 'fail', permanent: false, status: '4.4.3', reason: expect.stringMatching(/no dns\.servers configured/) });
    expect(await router.route('unrouted.test')).toMatchObject({ kind: 'fail', permanent: false, status: '4.4.4' });
  });

  it('uses literal addresses as they are', async () => {
    const router = new Router(parseConfig({ routes: { '*': { host: '[127.0.0.7]', port: 2600 } } }), null);
    expect(await router.route('x.test')).toEqual({ kind: 'hops', via: 'route', hops: [{ name: '[127.0.0.7]', addresses: ['127.0.0.7'], port: 2600, protocol: 'smtp' }] });
  });
});

describe('reverse names', () => {
  it.each([
    ['127.0.0.1', '1.0.0.127.in-addr.arpa'],
    ['::ffff:192.0.2.5', '5.2.0.192.in-addr.arpa'],
    ['2001:db8::1', '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa'],
    ['::1', '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa'],
  ])('%s → %s', (ip, name) => {
    expect(reverseName(ip)).toBe(name);
  });
});
