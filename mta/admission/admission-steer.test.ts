import { describe, expect, it } from 'vitest';
import { byLoad, highLoad, steer, type NodeInfo, type Standing, type SteerInput } from './admission-steer.js';

const A1 = { name: 'mx1.example.com', address: '192.0.2.1' };
const A2 = { name: 'mx2.example.com', address: '192.0.2.2' };
const C1 = { name: 'mxc.example.com', address: '192.0.2.31' };
const C2 = { name: 'mxc2.example.com', address: '192.0.2.32' };

const base: SteerInput = { primary: [A1, A2], overflow: [C1], nodes: null, level: 'normal', mxQueryRatio: 1, overloadRatio: 6 };
const node = (h: { name: string; address: string }, load: number, level: NodeInfo['level'] = 'normal'): NodeInfo => ({ ...h, load, level });

describe('DNS steering', () => {
  const table: Array<[string, Partial<SteerInput>, Standing, { mode: string; mechanism: string; hosts: string[] }]> = [
    ['normal: every resolver gets the primary hosts', {}, 'unknown', { mode: 'normal', mechanism: 'primary', hosts: ['mx1.example.com', 'mx2.example.com'] }],
    ['normal: blocked resolvers too (steering only acts under load)', {}, 'blocked', { mode: 'normal', mechanism: 'primary', hosts: ['mx1.example.com', 'mx2.example.com'] }],
    ['normal while the rate is not known yet', { mxQueryRatio: null }, 'unknown', { mode: 'normal', mechanism: 'primary', hosts: ['mx1.example.com', 'mx2.example.com'] }],
    ['normal below the overload ratio', { mxQueryRatio: 5.9 }, 'unknown', { mode: 'normal', mechanism: 'primary', hosts: ['mx1.example.com', 'mx2.example.com'] }],
    ['normal when this node is only busy', { level: 'busy' }, 'unknown', { mode: 'normal', mechanism: 'primary', hosts: ['mx1.example.com', 'mx2.example.com'] }],
    ['surge: a known resolver gets the primary hosts', { mxQueryRatio: 6 }, 'known', { mode: 'high', mechanism: 'known', hosts: ['mx1.example.com', 'mx2.example.com'] }],
    ['surge: a pinned resolver gets the primary hosts', { mxQueryRatio: 6 }, 'pinned', { mode: 'high', mechanism: 'known', hosts: ['mx1.example.com', 'mx2.example.com'] }],
    ['surge: an unknown resolver gets the overflow hosts', { mxQueryRatio: 6 }, 'unknown', { mode: 'high', mechanism: 'overflow', hosts: ['mxc.example.com'] }],
    ['surge: a blocked resolver is treated as unknown', { mxQueryRatio: 9 }, 'blocked', { mode: 'high', mechanism: 'overflow', hosts: ['mxc.example.com'] }],
    ['node overloaded: unknown to overflow', { level: 'overload' }, 'unknown', { mode: 'high', mechanism: 'overflow', hosts: ['mxc.example.com'] }],
    ['high load without overflow hosts: SERVFAIL for unknown', { level: 'overload', overflow: [] }, 'unknown', { mode: 'high', mechanism: 'servfail', hosts: [] }],
    ['high load without overflow hosts: known still served', { level: 'overload', overflow: [] }, 'known', { mode: 'high', mechanism: 'known', hosts: ['mx1.example.com', 'mx2.example.com'] }],
    ['overflow hosts overloaded too: SERVFAIL', { level: 'overload', nodes: [node(A1, 5, 'overload'), node(C1, 9, 'overload')] }, 'unknown', { mode: 'high', mechanism: 'servfail', hosts: [] }],
    ['only the usable overflow hosts are named', { level: 'overload', overflow: [C1, C2], nodes: [node(C1, 9, 'overload'), node(C2, 1)] }, 'unknown', { mode: 'high', mechanism: 'overflow', hosts: ['mxc2.example.com'] }],
    ['most primary hosts overloaded: high mode', { nodes: [node(A1, 5, 'overload'), node(A2, 5, 'overload')] }, 'unknown', { mode: 'high', mechanism: 'overflow', hosts: ['mxc.example.com'] }],
    ['half the primary hosts overloaded: still normal, the overloaded last', { nodes: [node(A1, 5, 'overload'), node(A2, 9)] }, 'unknown', { mode: 'normal', mechanism: 'primary', hosts: ['mx2.example.com', 'mx1.example.com'] }],
    ['no primary host at all: SERVFAIL', { primary: [] }, 'known', { mode: 'normal', mechanism: 'servfail', hosts: [] }],
    ['cluster: live nodes join the primary hosts, least loaded first, overflow nodes left out', {
      primary: [A1], nodes: [node(A1, 30), node({ name: 'n2.example.com', address: '192.0.2.12' }, 10), node(C1, 0)],
    }, 'unknown', { mode: 'normal', mechanism: 'primary', hosts: ['n2.example.com', 'mx1.example.com'] }],
  ];

  it.each(table)('%s', (_title, change, standing, expected) => {
    const s = steer({ ...base, ...change }, standing);
    expect({ mode: s.mode, mechanism: s.mechanism, hosts: s.hosts.map((h) => h.name) }).toEqual(expected);
  });

  it('says why the mode is high', () => {
    expect(highLoad({ ...base, mxQueryRatio: 7.25 }).why).toBe('MX queries at 7.3x their normal rate');
    expect(highLoad({ ...base, level: 'overload' }).why).toBe('this node is overloaded');
    expect(highLoad(base)).toEqual({ high: false, why: '' });
  });

  it('gives equal loads equal preferences, so senders spread over them', () => {
    const hosts = byLoad([node(A1, 3), node(A2, 3), node(C1, 1), node(C2, 2, 'busy')]);
    expect(hosts.map((h) => [h.name, h.preference])).toEqual([
      ['mxc.example.com', 10], ['mx1.example.com', 20], ['mx2.example.com', 20], ['mxc2.example.com', 30],
    ]);
  });
});
