// A delivery whose connection fails still leaves a session row, tied to its message, with the real
// reason: a refused port, a TLS handshake a peer breaks after STARTTLS, a peer that never greets, an MX
// lookup that fails (SERVFAIL from a DNS server on loopback);
// `ichidan sessions list --message ID` lists them and the attempt names its session.
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminRequest, adminSocket, baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { CLI } from './helpers/child.js';
import { startDns, type TestDns } from './helpers/dns-server.js';

const exec = promisify(execFile);

function listen(server: Server, host: string): Promise<number> {
  return new Promise((resolve) => server.listen(0, host, () => resolve((server.address() as { port: number }).port)));
}

/** Offers STARTTLS, says 220 to it, then answers the TLS handshake with plain text and closes. */
function tlsBreaker(): Server {
  return createServer((socket: Socket) => {
    socket.write('220 breaker.test ESMTP\r\n');
    socket.on('data', (d) => {
      const line = d.toString();
      if (/^EHLO/i.test(line)) socket.write('250-breaker.test\r\n250 STARTTLS\r\n');
      else if (/^STARTTLS/i.test(line)) {
        socket.write('220 go ahead\r\n');
        socket.once('data', () => socket.end('this is not TLS at all\r\n'));
      }
    });
    socket.on('error', () => undefined);
  });
}

interface SessionRow { id: string; host: string; address: string; port: number; ended: string | null; messages: number }

describe('failed connections leave session rows', { timeout: 120_000 }, () => {
  let t: TestApp;
  let cliConfig: string;
  const servers: Server[] = [];
  const ports = { refused: 0, tls: 0, silent: 0 };
  let refusedQid = '';
  let dns: TestDns;

  beforeAll(async () => {
    const closed = createServer();
    ports.refused = await listen(closed, '127.0.0.5');
    await new Promise((r) => closed.close(r));
    const breaker = tlsBreaker();
    servers.push(breaker);
    ports.tls = await listen(breaker, '127.0.0.6');
    const silent = createServer((s) => s.on('error', () => undefined));
    servers.push(silent);
    ports.silent = await listen(silent, '127.0.0.7');
    dns = await startDns({ 'broken.test': { servfail: true } });
    t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      dns: { servers: [dns.server] },
      queue: { retryInitial: '1h', retryMax: '2h', retryJitter: 0 },
      delivery: { greetingTimeout: '500ms' },
      routes: {
        'refused.test': { host: '127.0.0.5', port: ports.refused },
        'tls.test': { host: '127.0.0.6', port: ports.tls },
        'silent.test': { host: '127.0.0.7', port: ports.silent },
      },
    }));
    cliConfig = join(t.dataDir, 'cli.yaml');
    await writeFile(cliConfig, `dataDir: ${JSON.stringify(t.dataDir)}\n`);
  });
  afterAll(async () => {
    await t?.stop();
    for (const s of servers) await new Promise((r) => s.close(r));
    await dns?.close();
  });

  async function deferred(to: string): Promise<{ qid: string; sessions: SessionRow[]; attempt: { session: string | null; reply: string } }> {
    const mailer = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
    const info = await mailer.sendMail({ from: 'me@sender.test', to, text: 'hello' });
    mailer.close();
    const qid = /queued as ([0-9A-Z]{16})$/.exec(info.response)![1];
    let detail: Record<string, any> = {};
    await waitUntil(async () => {
      detail = (await adminRequest(adminSocket(t.app.config), 'GET', `/v1/queue/messages/${qid}`)).body;
      return (detail.attempts as unknown[]).length === 1 && (detail.sessions as unknown[]).length === 1;
    }, 15_000, `the failed attempt of ${to}`);
    const { stdout } = await exec(process.execPath, [CLI, 'sessions', 'list', '--message', qid, '--json', '-c', cliConfig]);
    const listed = JSON.parse(stdout) as { message: string; sessions: SessionRow[] };
    expect(listed.message).toBe(qid);
    return { qid, sessions: listed.sessions, attempt: detail.attempts[0] };
  }

  it('a refused connection: "connection refused"', async () => {
    const { qid, sessions, attempt } = await deferred('a@refused.test');
    refusedQid = qid;
    expect(sessions).toHaveLength(1);
    expect(sessions[0]).toMatchObject({ host: '127.0.0.5', address: '127.0.0.5', port: ports.refused, ended: 'connection refused (ECONNREFUSED)', messages: 1 });
    expect(attempt.session).toBe(sessions[0].id);
    expect(attempt.reply).toMatch(/connection refused \(ECONNREFUSED\)/);
  });

  it('a TLS handshake the peer breaks after STARTTLS: "TLS handshake failed"', async () => {
    const { sessions, attempt } = await deferred('b@tls.test');
    expect(sessions).toHaveLength(1);
    expect(sessions[0].ended).toMatch(/^TLS handshake failed: /);
    expect(sessions[0]).toMatchObject({ address: '127.0.0.6', port: ports.tls, messages: 1 });
    expect(attempt.session).toBe(sessions[0].id);
    expect(attempt.reply).toMatch(/TLS handshake failed/);
  });

  it('a peer that never greets: the timeout', async () => {
    const { sessions, attempt } = await deferred('c@silent.test');
    expect(sessions).toHaveLength(1);
    expect(sessions[0]).toMatchObject({ address: '127.0.0.7', port: ports.silent, ended: 'no reply within 500 ms', messages: 1 });
    expect(attempt.session).toBe(sessions[0].id);
  });

  it('an MX lookup that fails: a session row with no address, saying so', async () => {
    const { sessions, attempt } = await deferred('e@broken.test');
    expect(sessions).toHaveLength(1);
    expect(sessions[0]).toMatchObject({ host: 'broken.test', address: '', port: 0, messages: 1 });
    expect(sessions[0].ended).toMatch(/^MX lookup for broken\.test failed: ESERVFAIL/);
    expect(attempt.session).toBe(sessions[0].id);
    expect(dns.queries.some((q) => q.name === 'broken.test')).toBe(true);
  });

  // (A second message to the refused port would wait: the refusal paused the site, delivery.throttle.)
  it('the text list names the reason too', async () => {
    const { stdout } = await exec(process.execPath, [CLI, 'sessions', 'list', '--message', refusedQid, '-c', cliConfig]);
    const [head, row] = stdout.trim().split('\n');
    expect(head).toBe('id\tstarted\tduration_ms\thost\taddress\ttls\tmessages\tended');
    expect(row).toMatch(new RegExp(`\\t127\\.0\\.0\\.5:${ports.refused}\\tnone\\t1\\tconnection refused \\(ECONNREFUSED\\)$`));
  });
});
