import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../mta-config.js';
import { ProxyDoor } from './ingress-proxy-door.js';

const settings = (from: string[]) => parseConfig({ listeners: [{ name: 'mx', role: 'mx', port: 25, proxyProtocol: { from } }] }).listeners[0].proxyProtocol;

describe('ProxyDoor.expects', () => {
  it('expects a header only from the configured balancers, as the settings in force say', () => {
    let current = settings(['10.0.0.0/24', '2001:db8::5']);
    const door = new ProxyDoor('mx', () => 'mx.test', () => current, pino({ level: 'silent' }));
    expect(door.expects('10.0.0.7')).toBe(true);
    expect(door.expects('::ffff:10.0.0.7')).toBe(true);
    expect(door.expects('10.0.1.7')).toBe(false);
    expect(door.expects('2001:db8::5')).toBe(true);
    expect(door.expects('2001:db8::6')).toBe(false);
    expect(door.expects(undefined)).toBe(false);
    // A reload moves the balancers: new connections follow it.
    current = settings(['10.0.1.7']);
    expect(door.expects('10.0.0.7')).toBe(false);
    expect(door.expects('10.0.1.7')).toBe(true);
    current = undefined;
    expect(door.expects('10.0.1.7')).toBe(false);
  });
});
