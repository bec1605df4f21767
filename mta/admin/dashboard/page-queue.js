// The queue browser (filters → messages), one message (envelope, headers, attempts, scan record,
// actions) and one stored session transcript.
import { act, age, api, el, kv, table, when } from './common.js';

const FILTERS = ['tenant', 'site', 'state', 'sender', 'recipient', 'olderThan', 'newerThan'];

function query() {
  const params = new URLSearchParams(location.hash.split('?')[1] ?? '');
  return Object.fromEntries(FILTERS.map((f) => [f, params.get(f) ?? '']));
}

export async function queuePage(root) {
  const current = query();
  const form = el('form', { className: 'filters', id: 'queue-filters' },
    FILTERS.map((f) => el('label', {}, f, f === 'state'
      ? el('select', { name: f }, ['', 'queued', 'deferred', 'held', 'quarantined', 'done', 'corrupt'].map((s) => el('option', { value: s }, s || 'any')))
      : el('input', { name: f, value: current[f], size: 14 }))),
    el('button', { type: 'submit' }, 'Filter'));
  form.elements.state.value = current.state;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const params = new URLSearchParams();
    for (const f of FILTERS) if (form.elements[f].value.trim()) params.set(f, form.elements[f].value.trim());
    location.hash = `#/queue${params.size ? `?${params}` : ''}`;
  });
  const params = new URLSearchParams({ limit: '200' });
  for (const [k, v] of Object.entries(current)) if (v) params.set(k, v);
  const { messages } = await api('GET', `/v1/queue/messages?${params}`);
  root.append(el('h1', {}, 'Queue'), form, table([
    { label: 'id', value: (m) => el('a', { href: `#/message/${m.id}` }, m.id) },
    { label: 'age', value: (m) => age(m.ageSeconds) },
    { label: 'tenant', value: (m) => m.tenant },
    { label: 'sender', value: (m) => m.sender || '<>' },
    { label: 'recipients', value: (m) => m.recipients.map((r) => r.address).join(', ') },
    { label: 'size', num: true, value: (m) => m.size },
    { label: 'state', value: (m) => m.state, cls: (m) => `state-${m.state}` },
    { label: 'next attempt', value: (m) => when(m.nextAttempt) },
    { label: 'last reply', value: (m) => m.lastReply },
  ], messages, { attrs: { id: 'queue-table' }, empty: 'no messages match' }));
}

function fields(headers) {
  if (typeof headers === 'string') return el('pre', { className: 'preview' }, headers);
  const rows = Array.isArray(headers)
    ? headers.map((h) => (Array.isArray(h) ? { name: h[0], value: h[1] } : h))
    : Object.entries(headers ?? {}).map(([name, value]) => ({ name, value: Array.isArray(value) ? value.join('\n') : value }));
  return table([{ label: 'field', value: (h) => h.name }, { label: 'value', value: (h) => String(h.value) }], rows, { attrs: { id: 'headers' } });
}

function scanRecord(scan) {
  if (!scan) return el('p', { className: 'muted' }, 'not scanned');
  const runs = typeof scan.runs === 'string' ? JSON.parse(scan.runs) : scan.runs;
  return el('div', {},
    kv([['action', scan.action], ['reason', scan.reason], ['at', when(scan.at)], ['time', scan.ms === undefined ? undefined : `${scan.ms} ms`]]),
    Array.isArray(runs) ? table([
      { label: 'engine', value: (r) => r.engine },
      { label: 'status', value: (r) => r.status },
      { label: 'detail', value: (r) => r.signature ?? r.rule ?? (r.score !== undefined ? `score ${r.score}/${r.threshold}` : r.message ?? r.reason ?? '') },
      { label: 'ms', num: true, value: (r) => r.ms },
    ], runs) : null);
}

function envelopeValue(key, v) {
  if (key === 'recipients' && Array.isArray(v)) return v.map((r) => r.address ?? JSON.stringify(r)).join(', ');
  if (key === 'receivedAt') return when(v);
  return typeof v === 'object' && v !== null ? JSON.stringify(v) : v;
}

export async function messagePage(root, id, redraw) {
  const m = await api('GET', `/v1/queue/messages/${encodeURIComponent(id)}`);
  const action = (name, label, confirmText) => el('button', {
    type: 'button', 'data-action': name, className: confirmText ? 'danger' : '',
    onclick: () => {
      if (confirmText && !window.confirm(confirmText)) return;
      void act(label, () => api('POST', `/v1/queue/${name}`, { message: id }), redraw, name === 'delete' ? '#/queue' : undefined);
    },
  }, label);
  const env = m.envelope ?? {};
  root.append(
    el('h1', {}, `Message ${m.id}`),
    el('div', { className: 'actions' },
      action('flush', 'Flush (retry now)'), action('hold', 'Hold'), action('release', 'Release'),
      action('bounce', 'Bounce', `Bounce message ${id} now, with a notice to its sender?`),
      action('delete', 'Delete', `Delete message ${id} without a notice?`)),
    el('p', { id: 'message-state' }, 'state: ', el('strong', { className: `state-${m.state}` }, m.state)),
    m.why ? el('p', { id: 'why' }, m.why) : null,
    el('h2', {}, 'Envelope'), kv(Object.entries(env).map(([k, v]) => [k, envelopeValue(k, v)])),
    el('h2', {}, 'Recipients'),
    table([
      { label: 'address', value: (r) => r.address },
      { label: 'state', value: (r) => r.state, cls: (r) => `state-${r.state}` },
      { label: 'next attempt', value: (r) => when(r.nextAttempt) },
      { label: 'last reply', value: (r) => r.lastReply },
    ], m.recipients ?? [], { attrs: { id: 'recipients' } }),
    el('h2', {}, 'Attempts'),
    table([
      { label: 'at', value: (a) => when(a.at) },
      { label: 'recipient', value: (a) => a.recipient },
      { label: 'host', value: (a) => a.host },
      { label: 'reply', value: (a) => a.reply },
      { label: 'transcript', value: (a) => (a.session ? el('a', { href: `#/transcript/${a.session}` }, 'session') : '–') },
    ], m.attempts ?? [], { attrs: { id: 'attempts' }, empty: 'no attempts yet' }),
    el('h2', {}, 'Sessions'),
    table([
      { label: 'session', value: (x) => el('a', { href: `#/transcript/${x.id}` }, x.id) },
      { label: 'started', value: (x) => when(x.startedAt) },
      { label: 'host', value: (x) => `${x.host} ${x.address}:${x.port}` },
      { label: 'TLS', value: (x) => x.tls },
      { label: 'ended', value: (x) => x.ended },
    ], m.sessions ?? [], { attrs: { id: 'sessions' }, empty: 'no sessions stored' }),
    el('h2', {}, 'Header fields'), fields(m.headers),
    el('h2', {}, 'Scan record'), scanRecord(m.scan),
  );
}

export async function transcriptPage(root, id) {
  const t = await api('GET', `/v1/transcripts/${encodeURIComponent(id)}`);
  const c = t.connection;
  root.append(
    el('h1', {}, `Session ${id}`),
    kv(Object.entries(c).map(([k, v]) => [k, k.endsWith('_at') ? when(v) : v])),
    el('h2', {}, 'Messages'),
    table([{ label: 'n', value: (m) => m.n }, { label: 'message', value: (m) => el('a', { href: `#/message/${m.queue_id}` }, m.queue_id) }, { label: 'recipients', value: (m) => m.recipients }], t.messages),
    el('h2', {}, 'Transcript'),
    el('pre', { className: 'preview', id: 'transcript' }, transcriptText(t)),
  );
}

/** The stored lines in order, with a marked gap where a stored chunk could not be read. */
function transcriptText(t) {
  const lines = t.commands.map((l) => [l.seq, `${l.dir === 'client' ? 'C:' : 'S:'} ${l.text}`]);
  const gaps = (t.unreadable ?? []).map((g) => [g.first_seq, `!! lines ${g.first_seq}-${g.last_seq} were stored but cannot be read (${g.error})`]);
  return [...lines, ...gaps].sort((a, b) => a[0] - b[0]).map(([, text]) => text).join('\n');
}
