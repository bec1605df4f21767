// The Dovecot auth protocol client against a scripted server on a unix socket: answers matched by
// id, FAIL with and without `temp`, malformed lines, a socket closed mid-request, a late answer,
// an unsupported version, no PLAIN, the bound on waiting requests.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DovecotAuthClient, DovecotClients } from './ingress-auth-dovecot.js';

const HANDSHAKE = 'VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t1\nCUID\t7\nCOOKIE\tabc\nDONE\n';

interface Scripted {
  path: string;
  /** Requests seen: [id, decoded user, decoded password, the whole line]. */
  requests: Array<{ id: string; user: string; password: string; line: string }>;
  connections: number;
  server: Server;
}

/** A server that greets with `greeting` and hands every AUTH line to `answer`. */
async function scripted(answer: (req: { id: string; user: string; password: string }, s: Socket) => void, greeting = HANDSHAKE): Promise<Scripted> {
  const dir = mkdtempSync(join(tmpdir(), 'ichidan-dovecot-fake-'));
  dirs.push(dir);
  const path = join(dir, 'auth');
  const out: Scripted = { path, requests: [], connections: 0, server: createServer() };
  out.server.on('connection', (s) => {
    out.connections++;
    s.write(greeting);
    let buf = '';
    s.on('data', (d) => {
      buf += String(d);
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const f = line.split('\t');
        if (f[0] !== 'AUTH') continue;
        const resp = f.find((x) => x.startsWith('resp='))!.slice(5);
        const [, user, password] = Buffer.from(resp, 'base64').toString().split('\0');
        out.requests.push({ id: f[1], user, password, line });
        answer({ id: f[1], user, password }, s);
      }
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => out.server.listen(path, () => r()));
  servers.push(out.server);
  return out;
}

const dirs: string[] = [];
const servers: Server[] = [];
const clients: DovecotAuthClient[] = [];
const client = (path: string, timeout = 2000, maxPending = 16) => {
  const c = new DovecotAuthClient(path, { timeout, maxPending });
  clients.push(c);
  return c;
};
const req = (username: string, password: string) => ({ username, password, address: '192.0.2.7' });

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('Dovecot auth client', () => {
  it('authenticates with PLAIN after the handshake, and matches answers to requests by id', async () => {
    const s = await scripted((r, sock) => {
      // Answers out of order: the second request first.
      if (r.user === 'slow@a.test') setTimeout(() => sock.write(`OK\t${r.id}\tuser=slow@a.test\n`), 100);
      else sock.write(r.password === 'right' ? `OK\t${r.id}\tuser=Ann@a.test\n` : `FAIL\t${r.id}\tuser=${r.user}\treason=Password mismatch\n`);
    });
    const c = client(s.path);
    const [slow, ann, bad] = await Promise.all([
      c.authenticate(req('slow@a.test', 'x')), c.authenticate(req('ann@a.test', 'right')), c.authenticate(req('ann@a.test', 'wrong')),
    ]);
    expect(slow).toEqual({ ok: true, user: 'slow@a.test' });
    expect(ann).toEqual({ ok: true, user: 'Ann@a.test' });
    expect(bad).toEqual({ ok: false, reason: 'Password mismatch' });
    expect(s.connections).toBe(1);
    expect(s.requests[1].line).toMatch(/^AUTH\t\d+\tPLAIN\tservice=smtp\tnologin\tno-penalty\tsecured\trip=192\.0\.2\.7\tresp=/);
    expect(s.requests.map((r) => [r.user, r.password])).toContainEqual(['ann@a.test', 'right']);
  });

  it('a FAIL marked temp rejects (the caller answers 454); a FAIL without reason is a plain refusal', async () => {
    const s = await scripted((r, sock) => sock.write(r.user === 'temp' ? `FAIL\t${r.id}\ttemp\treason=passdb\x01tdown\n` : `FAIL\t${r.id}\n`));
    const c = client(s.path);
    await expect(c.authenticate(req('temp', 'x'))!).rejects.toThrow('Dovecot: temporary failure (passdb\tdown)');
    expect(await c.authenticate(req('other', 'x'))).toEqual({ ok: false, reason: null });
  });

  it('a malformed line drops the connection and fails every request on it; the next request connects again', async () => {
    let first = true;
    const s = await scripted((r, sock) => {
      if (first) {
        first = false;
        sock.write('WHAT\tis this\n');
        return;
      }
      sock.write(`OK\t${r.id}\tuser=${r.user}\n`);
    });
    const c = client(s.path);
    await expect(c.authenticate(req('a', 'b'))!).rejects.toThrow('Dovecot auth protocol: unexpected line "WHAT\tis this"');
    expect(await c.authenticate(req('a', 'b'))).toEqual({ ok: true, user: 'a' });
    expect(s.connections).toBe(2);
  });

  it('a bad id or an over-long line is a protocol error too', async () => {
    const s = await scripted((r, sock) => sock.write(r.user === 'id' ? 'OK\tnot-a-number\tuser=x\n' : 'x'.repeat(70_000)));
    const c = client(s.path);
    await expect(c.authenticate(req('id', 'b'))!).rejects.toThrow('bad request id');
    await expect(c.authenticate(req('long', 'b'))!).rejects.toThrow('line too long');
  });

  it('the socket closing mid-request fails the request', async () => {
    const s = await scripted((_r, sock) => sock.destroy());
    await expect(client(s.path).authenticate(req('a', 'b'))!).rejects.toThrow(/closed/);
  });

  it('no answer within the timeout fails the request; the late answer is ignored', async () => {
    const s = await scripted((r, sock) => setTimeout(() => sock.write(`OK\t${r.id}\tuser=a\n`), 400));
    const c = client(s.path, 150);
    await expect(c.authenticate(req('a', 'b'))!).rejects.toThrow('no answer from Dovecot within 150 ms');
    await new Promise((r) => setTimeout(r, 400));
    expect(c.pending).toBe(0);
  });

  it('refuses a server of another major version, or one without PLAIN', async () => {
    const v2 = await scripted(() => undefined, 'VERSION\t2\t0\nMECH\tPLAIN\nDONE\n');
    await expect(client(v2.path).authenticate(req('a', 'b'))!).rejects.toThrow('unsupported version 2.0');
    const noPlain = await scripted(() => undefined, 'VERSION\t1\t2\nMECH\tLOGIN\tplaintext\nDONE\n');
    await expect(client(noPlain.path).authenticate(req('a', 'b'))!).rejects.toThrow('does not offer PLAIN');
  });

  it('a socket nobody listens on fails the request', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ichidan-dovecot-fake-'));
    dirs.push(dir);
    await expect(client(join(dir, 'missing')).authenticate(req('a', 'b'))!).rejects.toThrow(/ENOENT/);
  });

  it('gives null past maxPending, and never sends a name or password holding control characters', async () => {
    const s = await scripted(() => undefined);
    const c = client(s.path, 1000, 2);
    const a = c.authenticate(req('a', 'b'))!;
    const b = c.authenticate(req('c', 'd'))!;
    expect(c.authenticate(req('e', 'f'))).toBeNull();
    a.catch(() => undefined);
    b.catch(() => undefined);
    c.close();
    await expect(a).rejects.toThrow('closed');
    expect(await client(s.path).authenticate(req('a\tb', 'x'))).toEqual({ ok: false, reason: 'name or password with control characters' });
  });

  it('one client per socket and settings: a reload naming another socket closes the old one', async () => {
    const s = await scripted(() => undefined);
    const clients = new DovecotClients();
    const a = clients.client(s.path, { timeout: 1000, maxPending: 4 });
    expect(clients.client(s.path, { timeout: 1000, maxPending: 4 })).toBe(a);
    const waiting = a.authenticate(req('a', 'b'))!;
    const b = clients.client(`${s.path}-other`, { timeout: 1000, maxPending: 4 });
    expect(b).not.toBe(a);
    await expect(waiting).rejects.toThrow('closed');
    clients.close();
  });
});
