// Engines: state and breaker now, breaker history, detections per engine per day, unique catches, latency.
import { act, api, chart, el, table, when } from './common.js';

export async function enginesPage(root, _unused, redraw) {
  const [list, events, stats] = await Promise.all([
    api('GET', '/v1/engines'), api('GET', '/v1/engines/events?last=200'), api('GET', '/v1/engines/stats?days=14'),
  ]);
  const toggle = (e) => el('button', {
    type: 'button', 'data-engine': e.name,
    onclick: () => {
      if (e.state === 'disabled') return void act(`enable ${e.name}`, () => api('POST', `/v1/engines/${encodeURIComponent(e.name)}/enable`), redraw);
      const reason = window.prompt(`Why switch ${e.name} off?`);
      if (reason) void act(`disable ${e.name}`, () => api('POST', `/v1/engines/${encodeURIComponent(e.name)}/disable`, { reason }), redraw);
    },
  }, e.state === 'disabled' ? 'Enable' : 'Disable');
  root.append(
    el('h1', {}, 'Engines'),
    el('p', { className: 'muted' }, `config generation ${list.generation}`),
    table([
      { label: 'name', value: (e) => `${e.name}${e.shadow ? ' (shadow)' : ''}` },
      { label: 'type', value: (e) => e.type },
      { label: 'kind', value: (e) => e.kind },
      { label: 'state', value: (e) => e.state, cls: (e) => (e.state === 'disabled' ? 'state-held' : '') },
      { label: 'breaker', value: (e) => e.breaker, cls: (e) => `state-${e.breaker === 'open' ? 'open' : 'closed'}` },
      { label: 'scans', num: true, value: (e) => e.scans },
      { label: 'failures', num: true, value: (e) => e.failures },
      { label: 'version', value: (e) => e.version },
      { label: 'last error / reason', value: (e) => (e.state === 'disabled' ? e.disabledReason : e.lastError) },
      { label: '', value: toggle },
    ], list.engines, { attrs: { id: 'engines-table' }, empty: 'no engines configured' }),
  );
  const days = [...new Set(stats.rows.map((r) => r.day))].sort();
  const engines = [...new Set(stats.rows.map((r) => r.engine))].sort();
  const per = (field) => engines.map((name) => ({ label: name, values: days.map((d) => stats.rows.find((r) => r.day === d && r.engine === name)?.[field] ?? 0) }));
  const times = days.map((d) => Date.parse(`${d}T12:00:00Z`));
  // Half a day either side, so a single day is a bar of its own, not the whole axis.
  const x = times.length ? { range: [times[0] / 1000 - 43_200, times[times.length - 1] / 1000 + 43_200] } : {};
  root.append(el('h2', {}, `The last ${stats.days} days`));
  if (days.length > 0) {
    root.append(el('div', { className: 'charts' },
      chart('Detections per engine per day', times, per('detected'), { bars: true, x }),
      chart('Unique catches (only this engine found it)', times, per('detectedAlone'), { bars: true, x })));
  }
  root.append(table([
    { label: 'day', value: (r) => r.day },
    { label: 'engine', value: (r) => r.engine },
    { label: 'scanned', num: true, value: (r) => r.scanned },
    { label: 'detected', num: true, value: (r) => r.detected },
    { label: 'unique', num: true, value: (r) => r.detectedAlone },
    { label: 'errors', num: true, value: (r) => r.errors },
    { label: 'timeouts', num: true, value: (r) => r.timeouts },
    { label: 'skipped', num: true, value: (r) => r.skipped },
    { label: 'p50 ms', num: true, value: (r) => r.p50 },
    { label: 'p99 ms', num: true, value: (r) => r.p99 },
  ], [...stats.rows].reverse(), { attrs: { id: 'engine-stats' }, empty: 'no scans recorded yet' }));
  root.append(el('h2', {}, 'Breaker history and switches'), table([
    { label: 'at', value: (e) => when(e.at) },
    { label: 'engine', value: (e) => e.engine },
    { label: 'event', value: (e) => (e.to_state ? `${e.event} ${e.from_state} → ${e.to_state}` : e.event) },
    { label: 'reason', value: (e) => e.reason },
  ], events.events, { attrs: { id: 'engine-events' }, empty: 'no events' }));
}
