// Overview: messages in and out per minute, queue depth per tenant and per site, the pressure level.
import { api, chart, el, seriesOf } from './common.js';

const LEVELS = ['normal', 'busy', 'overload'];

function tile(label, value) {
  return el('div', { className: 'tile' }, el('div', { className: 'value' }, String(value)), el('div', { className: 'label' }, label));
}

export async function overview(root, _unused, redraw) {
  const range = new URLSearchParams(location.search).get('range') === 'day' ? 'day' : 'hour';
  const [history, admission, egress] = await Promise.all([
    api('GET', `/v1/history?range=${range}`), api('GET', '/v1/admission'), api('GET', '/v1/egress'),
  ]);
  const points = history.points;
  const last = points[points.length - 1];
  const depth = last ? Object.values(last.tenants).reduce((a, b) => a + b, 0) : 0;
  const perMinute = (field) => points.map((p) => (p[field] * 60) / history.step);
  const times = points.map((p) => p.t);
  const switcher = el('select', { 'aria-label': 'range', onchange: (e) => { void load(e.target.value); } },
    el('option', { value: 'hour' }, 'last hour'), el('option', { value: 'day' }, 'last 24 hours'));
  switcher.value = range;

  root.append(
    el('h1', {}, 'Overview'),
    el('div', { className: 'tiles' },
      tile('pressure level', admission.measuring ? admission.level : 'not measured'),
      tile('recipients queued or held', depth),
      tile('deliveries in flight', egress.active),
      tile('deliveries waiting', egress.waiting),
      tile('samples', points.length)),
    el('p', {}, switcher, ' ', el('span', { className: 'muted' }, `one point every ${history.step} s`)),
  );
  const charts = el('div', { className: 'charts', id: 'charts' });
  root.append(charts);
  if (points.length === 0) {
    charts.append(el('p', { className: 'muted' }, `no samples yet: the first comes ${history.step} s after the start`));
    return;
  }
  charts.append(
    chart('Messages per minute', times, [
      { label: 'accepted', values: perMinute('accepted') },
      { label: 'delivered', values: perMinute('delivered') },
      { label: 'deferred', values: perMinute('deferred') },
      { label: 'bounced', values: perMinute('bounced') },
    ]),
    chart('Queue depth per tenant', times, seriesOf(points, 'tenants')),
    chart('Queue depth per site', times, seriesOf(points, 'sites')),
    chart('Pressure level', times, [{ label: 'level', values: points.map((p) => p.level) }], {
      stepped: true, y: { range: [0, 2] }, yValues: (_u, ticks) => ticks.map((t) => LEVELS[t] ?? ''),
    }),
  );

  async function load(r) {
    const url = new URL(location.href);
    url.search = r === 'day' ? '?range=day' : '';
    window.history.replaceState(null, '', url);
    await redraw();
  }
}
