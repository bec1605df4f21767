// Quarantine review: the list, one message's header fields and a text preview (shown as text, never
// rendered), release and delete.
import { act, api, el, kv, table, when } from './common.js';

export async function quarantinePage(root) {
  const { messages } = await api('GET', '/v1/quarantine');
  root.append(el('h1', {}, 'Quarantine'), table([
    { label: 'id', value: (m) => el('a', { href: `#/quarantine/${m.id}` }, m.id) },
    { label: 'received', value: (m) => when(m.received_at) },
    { label: 'sender', value: (m) => m.sender || '<>' },
    { label: 'recipients', num: true, value: (m) => m.recipients },
    { label: 'size', num: true, value: (m) => m.size },
    { label: 'why', value: (m) => m.quarantine },
  ], messages, { attrs: { id: 'quarantine-table' }, empty: 'quarantine is empty' }));
}

export async function quarantinedPage(root, id, redraw) {
  let m;
  try {
    m = await api('GET', `/v1/quarantine/${encodeURIComponent(id)}`);
  } catch (err) {
    root.append(el('h1', {}, `Quarantined ${id}`), el('p', { id: 'gone' }, err.message), el('a', { href: '#/quarantine' }, 'back to the quarantine'));
    return;
  }
  root.append(
    el('h1', {}, `Quarantined ${m.id}`),
    el('div', { className: 'actions' },
      el('button', { type: 'button', 'data-action': 'release', onclick: () => void act('release', () => api('POST', `/v1/messages/${encodeURIComponent(id)}/release`), redraw, '#/quarantine') }, 'Release (deliver)'),
      el('button', {
        type: 'button', className: 'danger', 'data-action': 'delete',
        onclick: () => { if (window.confirm(`Delete quarantined message ${id}?`)) void act('delete', () => api('POST', '/v1/queue/purge', { message: id, reason: 'deleted from quarantine' }), redraw, '#/quarantine'); },
      }, 'Delete')),
    kv([['why', m.quarantine], ['sender', m.sender || '<>'], ['received', when(m.receivedAt)], ['client', `${m.client} (${m.helo})`], ['size', `${m.size} bytes`],
      ['recipients', m.recipients.map((r) => `${r.address} (${r.state})`).join(', ')]]),
    el('h2', {}, 'Header fields'),
    table([{ label: 'field', value: (h) => h.name }, { label: 'value', value: (h) => h.value }], m.headers, { attrs: { id: 'headers' } }),
    el('h2', {}, `Text${m.truncated ? ' (the beginning)' : ''}`),
    el('pre', { className: 'preview', id: 'preview' }, m.preview),
  );
}
