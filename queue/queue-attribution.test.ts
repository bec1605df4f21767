import { describe, expect, it } from 'vitest';
import { blame, type TenantEvidence } from './queue-attribution.js';

const t = { minSignals: 3, attributionShare: 0.6 };
const ev = (o: Record<string, [deliveries: number, throttles: number]>) =>
  new Map<string, TenantEvidence>(Object.entries(o).map(([k, [deliveries, throttles]]) => [k, { deliveries, throttles }]));

describe('throttle attribution', () => {
  it.each([
    ['too few throttle replies', { a: [10, 2], b: [10, 0] }, null],
    ['one tenant alone: no one else to protect', { a: [10, 10] }, null],
    ['a tenant with nothing in the window does not count as a second tenant', { a: [10, 5], b: [0, 0] }, null],
    ['the tenant behind most throttle replies', { a: [10, 4], b: [10, 1] }, { tenant: 'a', of: 'throttle signals', share: 0.8, throttles: 5 }],
    ['the tenant behind most deliveries', { a: [90, 2], b: [10, 2] }, { tenant: 'a', of: 'deliveries', share: 0.9, throttles: 4 }],
    ['no tenant reaches the share', { a: [10, 2], b: [10, 2], c: [10, 2] }, null],
  ] as const)('%s', (_, evidence, expected) => {
    expect(blame(ev(evidence as never), t)).toEqual(expected);
  });
});
