// Egress: pairs (site, source) with their windows, blocks in force, throttle events on a timeline, undo.
import { act, api, chart, el, table, when } from './common.js';

const KINDS = ['paused', 'slowed', 'suspended', 'hold'];
const BUCKET_MS = 10 * 60_000;

function scope(e) {
  return [e.tenant && `tenant=${e.tenant}`, e.site && `site=${e.site}`, e.source !== null && e.source !== undefined && e.site && `source=${e.source || 'default'}`].filter(Boolean).join(' ');
}

export async function egressPage(root, _unused, redraw) {
  const [now, { events }] = await Promise.all([api('GET', '/v1/egress'), api('GET', '/v1/egress/events?last=500')]);
  root.append(
    el('h1', {}, 'Egress'),
    el('p', {}, `deliveries in flight ${now.active}, waiting ${now.waiting}`),
    el('h2', {}, 'Pairs'),
    table([
      { label: 'site', value: (p) => p.site },
      { label: 'source', value: (p) => p.source || 'default' },
      { label: 'window', num: true, value: (p) => p.window },
      { label: 'max', num: true, value: (p) => p.maxConnections },
      { label: 'in flight', num: true, value: (p) => p.active },
    ], now.pairs, { attrs: { id: 'pairs' }, empty: 'no pairs yet' }),
    el('h2', {}, 'Blocks in force'),
    table([
      { label: 'scope', value: (b) => scope({ ...b, source: b.source ?? null }) },
      { label: 'until', value: (b) => (b.until === null ? 'until lifted' : when(b.until)) },
    ], now.blocks, { attrs: { id: 'blocks' }, empty: 'none' }),
  );
  if (events.length > 0) {
    const first = Math.floor(Math.min(...events.map((e) => e.at)) / BUCKET_MS) * BUCKET_MS;
    const times = [];
    for (let t = first; t <= Date.now(); t += BUCKET_MS) times.push(t);
    const series = KINDS.map((kind) => ({ label: kind, values: times.map((t) => events.filter((e) => e.kind === kind && e.at >= t && e.at < t + BUCKET_MS).length) }));
    root.append(el('div', { className: 'charts' }, chart('Throttle events and holds (per 10 minutes)', times, series, { bars: true })));
  }
  const undo = (e) => (e.undone_at === null && (e.until === null || e.until > Date.now())
    ? el('button', { type: 'button', 'data-undo': e.id, onclick: () => void act(`undo ${e.id}`, () => api('POST', `/v1/egress/events/${e.id}/undo`, { by: 'dashboard' }), redraw) }, 'Undo')
    : (e.undone_at ? `undone ${when(e.undone_at)} by ${e.undone_by}` : 'ended'));
  root.append(el('h2', {}, 'Events'), table([
    { label: 'id', num: true, value: (e) => e.id },
    { label: 'at', value: (e) => when(e.at) },
    { label: 'kind', value: (e) => e.kind },
    { label: 'actor', value: (e) => (e.origin ? `${e.actor}@${e.origin}` : e.actor) },
    { label: 'scope', value: scope },
    { label: 'until', value: (e) => (e.until === null ? (e.kind === 'slowed' ? '' : 'until lifted') : when(e.until)) },
    { label: 'reason', value: (e) => e.reason },
    { label: '', value: undo },
  ], events, { attrs: { id: 'egress-events' }, empty: 'no events' }));
}
