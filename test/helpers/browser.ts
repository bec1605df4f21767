/*
 * A real browser for the dashboard tests: Debian's chromium, headless, driven by playwright-core.
 *
 * Gives: `browserSupport()` — with CI set, a missing chromium is an error instead of a skip (as
 *   daemons.ts and redis.ts do for their peers); `openBrowser()`, a fresh profile in a temporary
 *   folder, no network beyond what the page asks (no sync, no component updates, no QUIC), and
 *   `watch(page)`: every console error, uncaught page error and CSP violation the page reports.
 * Network: only the loopback addresses the tests point it at.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

export function browserSupport(): { ok: true } | { ok: false; reason: string } {
  if (existsSync(CHROMIUM)) return { ok: true };
  if (process.env.CI) throw new Error(`${CHROMIUM} is missing: CI must install chromium (.ci/run)`);
  return { ok: false, reason: 'chromium is not installed (apt install chromium)' };
}

export interface TestBrowser {
  context: BrowserContext;
  close(): Promise<void>;
}

export async function openBrowser(): Promise<TestBrowser> {
  const profile = await mkdtemp(join(tmpdir(), 'ichidan-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  // Chromium reports CSP violations in the console too; the event names the directive for certain.
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));
  });
  return {
    context,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/**
 * What went wrong on a page: console errors and warnings (CSP violations are reported there too),
 * uncaught errors, and answers of 400 and above ("HTTP 401 POST /path"; the console's own line
 * for those is left out, the answer says more).
 */
export function watch(page: Page): string[] {
  const problems: string[] = [];
  page.on('console', (m) => {
    if ((m.type() === 'error' || m.type() === 'warning') && !m.text().startsWith('Failed to load resource')) problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  return problems;
}
