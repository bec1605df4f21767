// What every page shares: the admin API (session cookie, and the CSRF token on every change),
// elements built from text only (nothing is ever parsed as HTML), and charts (uPlot).
import uPlot from './vendor/uPlot.esm.js';

// The session's CSRF token, kept by this origin (scheme, host and port) since the login: the cookie
// alone opens nothing, as a browser also sends it to pages of other ports on the same address.
const KEPT = 'ichidan-csrf';
let csrf = localStorage.getItem(KEPT);
export function keptCsrf() { return csrf; }
export function setCsrf(token) {
  csrf = token;
  if (token) localStorage.setItem(KEPT, token);
  else localStorage.removeItem(KEPT);
}

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** A request to the admin API; every one carries the session's CSRF token, changes are JSON. */
export async function api(method, url, body) {
  const headers = { accept: 'application/json' };
  if (csrf) headers['x-csrf-token'] = csrf;
  if (method !== 'GET') headers['content-type'] = 'application/json';
  const res = await fetch(url, { method, headers, credentials: 'same-origin', body: method === 'GET' ? undefined : JSON.stringify(body ?? {}) });
  let data = {};
  try { data = await res.json(); } catch { /* an empty or non-JSON answer */ }
  if (res.status === 401) window.dispatchEvent(new CustomEvent('logged-out'));
  if (!res.ok) throw new ApiError(res.status, data.error ?? `status ${res.status}`);
  return data;
}

/** An element with attributes (and `on*` listeners) and children; strings become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'className') node.className = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}

/** What a cell shows of a value: yes/no for a flag, a dash for nothing. */
const shown = (v) => (typeof v === 'boolean' ? (v ? 'yes' : 'no') : (v ?? '–'));

export function table(columns, rows, opts = {}) {
  const head = el('tr', {}, columns.map((c) => el('th', { className: c.num ? 'num' : '' }, c.label)));
  const body = rows.map((r) => el('tr', opts.rowAttrs ? opts.rowAttrs(r) : {}, columns.map((c) => {
    const v = c.value(r);
    return el('td', { className: c.num ? 'num' : c.cls?.(r) ?? '' }, v instanceof Node ? v : shown(v));
  })));
  if (rows.length === 0) body.push(el('tr', {}, el('td', { colspan: columns.length, className: 'muted' }, opts.empty ?? 'nothing')));
  return el('table', opts.attrs ?? {}, el('thead', {}, head), el('tbody', {}, body));
}

export const when = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '–');
export function age(seconds) {
  if (seconds === undefined || seconds === null) return '–';
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

export function kv(pairs) {
  return el('dl', { className: 'kv' }, pairs.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v instanceof Node ? v : shown(v))]));
}

/** A message shown at the top of a page (the outcome of an action). */
export function status(text, bad = false) {
  const s = document.getElementById('status');
  if (!s) return;
  s.className = bad ? 'error' : 'ok';
  s.textContent = text;
}

const PALETTE = ['#2257c9', '#e8590c', '#0c8599', '#c2255c', '#5f3dc4', '#2b8a3e', '#e67700', '#495057', '#862e9c'];

/**
 * A uPlot time chart in a titled box: `times` in ms, `series` [{label, values}]. The box notes how
 * many points it holds (data-points), so a test sees the chart has data.
 */
export function chart(title, times, series, opts = {}) {
  const box = el('div', { className: 'chart', 'data-chart': title, 'data-points': times.length }, el('h2', {}, title));
  const width = () => Math.max(300, (box.clientWidth || 600) - 16);
  const plot = new uPlot({
    width: width(), height: opts.height ?? 200,
    scales: { x: { time: opts.time !== false, ...(opts.x ?? {}) }, y: opts.y ?? {} },
    series: [{}, ...series.map((s, i) => ({
      label: s.label, stroke: PALETTE[i % PALETTE.length], width: 1.5,
      fill: opts.bars ? PALETTE[i % PALETTE.length] + '55' : undefined,
      paths: opts.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : (opts.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined),
    }))],
    axes: [{}, opts.yValues ? { values: opts.yValues, size: 72 } : {}],
  }, [times.map((t) => t / 1000), ...series.map((s) => s.values)], box);
  requestAnimationFrame(() => plot.setSize({ width: width(), height: opts.height ?? 200 }));
  return box;
}

/** Series per key of a record field across points (queue depth per tenant or site). */
export function seriesOf(points, field) {
  const keys = [...new Set(points.flatMap((p) => Object.keys(p[field])))].sort();
  return keys.map((k) => ({ label: k, values: points.map((p) => p[field][k] ?? 0) }));
}

let carry = false;
/** Goes to another page keeping the outcome shown (app.js clears it on any other change of page). */
export function navigate(hash) {
  carry = true;
  location.hash = hash;
}
export function takeCarry() {
  const c = carry;
  carry = false;
  return c;
}

/** Runs an action and shows its outcome; then the page is drawn again, or `then` goes elsewhere on success. */
export async function act(label, run, redraw, then) {
  try {
    const answer = await run();
    status(`${label}: ${summary(answer)}`);
    if (then) return navigate(then);
  } catch (err) {
    status(`${label}: ${err.message}`, true);
  }
  await redraw();
}

function summary(answer) {
  const parts = Object.entries(answer ?? {}).filter(([, v]) => typeof v !== 'object').map(([k, v]) => `${k} ${v}`);
  return parts.length ? parts.join(', ') : 'done';
}
