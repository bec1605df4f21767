// Cluster: the nodes the registry knows, Redis's health, draining this node.
import { act, age, api, el, kv, table, when } from './common.js';

export async function clusterPage(root, _unused, redraw) {
  const c = await api('GET', '/v1/cluster');
  root.append(el('h1', {}, 'Cluster'));
  if (c.problem) root.append(el('p', { className: 'error', id: 'cluster-problem' }, c.problem));
  if (c.redis) root.append(el('h2', {}, 'Redis'), kv([['url', c.redis.url], ['connected', String(c.redis.connected)], ['round trip', c.redis.rttMs === null ? null : `${c.redis.rttMs} ms`], ['version', c.redis.version], ['memory', c.redis.usedMemoryHuman]]));
  const nodes = c.nodes ?? [{ ...c.local, alive: true, seenAt: Date.now() }];
  root.append(el('h2', {}, 'Nodes'), table([
    { label: 'node', value: (n) => `${n.node}${n.node === c.node ? ' (this one)' : ''}` },
    { label: 'host', value: (n) => `${n.host} pid ${n.pid}` },
    { label: 'alive', value: (n) => (n.alive ? 'yes' : 'gone'), cls: (n) => (n.alive ? 'state-delivered' : 'state-bounced') },
    { label: 'seen', value: (n) => when(n.seenAt) },
    { label: 'up', value: (n) => (n.startedAt ? age((Date.now() - n.startedAt) / 1000) : '–') },
    { label: 'level', value: (n) => n.level ?? '–' },
    { label: 'in flight', num: true, value: (n) => n.active },
    { label: 'waiting', num: true, value: (n) => n.waiting },
    { label: 'queue', value: (n) => Object.entries(n.queue ?? {}).map(([k, v]) => `${k} ${v}`).join(', ') },
    { label: 'leases', num: true, value: (n) => n.leases },
    { label: 'loop delay', num: true, value: (n) => n.loopDelayMs },
    { label: 'draining', value: (n) => (n.draining ? 'yes' : 'no') },
  ], nodes, { attrs: { id: 'nodes' } }));
  if (c.clustered) {
    const draining = c.local.draining;
    root.append(el('div', { className: 'actions' }, el('button', {
      type: 'button', className: draining ? '' : 'danger',
      onclick: () => {
        if (!draining && !window.confirm('Drain this node: refuse new mail and hand its queue to the other nodes?')) return;
        void act(draining ? 'undrain' : 'drain', () => api('POST', draining ? '/v1/node/undrain' : '/v1/node/drain'), redraw);
      },
    }, draining ? 'Take mail again (undrain)' : 'Drain this node')));
  }
}
