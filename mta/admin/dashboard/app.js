// The dashboard's shell: login, the pages by the URL's #fragment, logout.
import { api, ApiError, el, keptCsrf, setCsrf, takeCarry } from './common.js';
import { overview } from './page-overview.js';
import { queuePage, messagePage, transcriptPage } from './page-queue.js';
import { enginesPage } from './page-engines.js';
import { egressPage } from './page-egress.js';
import { quarantinePage, quarantinedPage } from './page-quarantine.js';
import { clusterPage } from './page-cluster.js';

const ROUTES = [
  [/^#\/overview$/, overview],
  [/^#\/queue(?:\?.*)?$/, queuePage],
  [/^#\/message\/([0-9A-Za-z]+)$/, messagePage],
  [/^#\/transcript\/([0-9A-Za-z_.:-]+)$/, transcriptPage],
  [/^#\/engines$/, enginesPage],
  [/^#\/egress$/, egressPage],
  [/^#\/quarantine$/, quarantinePage],
  [/^#\/quarantine\/([0-9A-Za-z]+)$/, quarantinedPage],
  [/^#\/cluster$/, clusterPage],
];

const $ = (id) => document.getElementById(id);

function showLogin(on) {
  $('login').hidden = !on;
  $('nav').hidden = on;
  $('logout').hidden = on;
  if (on) {
    $('page').replaceChildren();
    $('status').textContent = '';
  }
}

async function render() {
  const hash = location.hash && location.hash !== '#/' ? location.hash : '#/overview';
  const page = $('page');
  delete page.dataset.ready;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', hash.startsWith(a.getAttribute('href')));
  const route = ROUTES.map(([re, fn]) => [re.exec(hash), fn]).find(([m]) => m);
  const content = el('div', { id: 'content' });
  page.replaceChildren(content);
  if (!route) {
    content.append(el('p', { className: 'error' }, 'no such page'));
    return;
  }
  const [match, fn] = route;
  try {
    await fn(content, match[1], render);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    content.append(el('p', { className: 'error' }, err.message));
  }
  page.dataset.ready = hash;
}

async function enter(csrf) {
  setCsrf(csrf);
  showLogin(false);
  try {
    const cluster = await api('GET', '/v1/cluster');
    $('nav-cluster').hidden = !cluster.clustered;
  } catch { /* the page says so */ }
  await render();
}

$('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('login-error').textContent = '';
  try {
    const { csrf } = await api('POST', '/dashboard/login', { token: $('token').value });
    $('token').value = '';
    await enter(csrf);
  } catch (err) {
    $('login-error').textContent = err.message;
  }
});

$('logout').addEventListener('click', async () => {
  try { await api('POST', '/dashboard/logout'); } catch { /* logged out anyway */ }
  setCsrf(null);
  showLogin(true);
});

window.addEventListener('logged-out', () => showLogin(true));
window.addEventListener('hashchange', () => {
  // An action's outcome stays shown while its page is drawn again, or when it led here.
  if (!takeCarry()) $('status').textContent = '';
  if ($('login').hidden) void render();
});

const { live } = await api('GET', '/dashboard/session').catch(() => ({ live: false }));
if (live) await enter(keptCsrf());
else {
  setCsrf(null);
  showLogin(true);
}
