/*
 * The real daemons started by scripts/engines.sh are where daemons.json says, and answer their
 * protocol's ping there: clamd `zPING` (over TCP and its unix socket), spamd `PING SPAMC/1.5`,
 * rspamd `GET /ping` (normal worker and controller), c-icap `OPTIONS` on the antivirus service.
 * With CI set every daemon must be present; otherwise a missing one skips its suite, saying why.
 */
import { connect, type NetConnectOpts } from 'node:net';
import { describe, expect, it } from 'vitest';
import { realDaemon, SKIP_REASON, type DaemonName } from './helpers/daemons.js';

/** Sends `request` and collects the reply until the peer closes or `complete` says it is whole. */
function exchange(to: NetConnectOpts, request: string, complete: (reply: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(to);
    let reply = '';
    const finish = (error?: Error) => {
      socket.destroy();
      clearTimeout(timer);
      if (error) reject(error);
      else resolve(reply);
    };
    const timer = setTimeout(() => finish(new Error(`no complete reply within 5 s; got ${JSON.stringify(reply)}`)), 5_000);
    socket.setNoDelay(true);
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk) => {
      reply += chunk.toString('latin1');
      if (complete(reply)) finish();
    });
    socket.on('end', () => finish());
    socket.on('error', finish);
  });
}

const headersDone = (reply: string) => reply.includes('\r\n\r\n');

/** Present when CI demands it (realDaemon then throws inside the test) or when actually running. */
function available(name: DaemonName): boolean {
  return Boolean(process.env.CI) || realDaemon(name) !== null;
}

function title(name: DaemonName): string {
  return available(name) ? `real ${name}` : `real ${name} — ${SKIP_REASON}`;
}

describe.skipIf(!available('clamd'))(title('clamd'), () => {
  it('answers zPING with PONG over TCP and over its unix socket', async () => {
    const clamd = realDaemon('clamd');
    expect(clamd).not.toBeNull();
    const done = (reply: string) => reply.endsWith('\0');
    expect(await exchange({ host: clamd!.host, port: clamd!.port }, 'zPING\0', done)).toBe('PONG\0');
    expect(clamd!.socket, 'daemons.json names the unix socket').toBeTruthy();
    expect(await exchange({ path: clamd!.socket! }, 'zPING\0', done)).toBe('PONG\0');
  });
});

describe.skipIf(!available('spamd'))(title('spamd'), () => {
  it('answers PING SPAMC/1.5 with PONG', async () => {
    const spamd = realDaemon('spamd');
    expect(spamd).not.toBeNull();
    const reply = await exchange({ host: spamd!.host, port: spamd!.port }, 'PING SPAMC/1.5\r\n\r\n', (r) => r.includes('\r\n'));
    expect(reply).toMatch(/^SPAMD\/1\.\d+ 0 PONG\r\n/);
  });
});

describe.skipIf(!available('rspamd'))(title('rspamd'), () => {
  it('answers GET /ping on the normal worker and on the controller', async () => {
    const rspamd = realDaemon('rspamd');
    expect(rspamd).not.toBeNull();
    expect(rspamd!.controllerPort, 'daemons.json names the controller port').toBeTypeOf('number');
    for (const port of [rspamd!.port, rspamd!.controllerPort!]) {
      const reply = await exchange({ host: rspamd!.host, port }, 'GET /ping HTTP/1.0\r\n\r\n', () => false);
      expect(reply, `port ${port}`).toMatch(/^HTTP\/1\.[01] 200 [\s\S]*\r\n\r\npong\r?\n?$/);
    }
  });
});

describe.skipIf(!available('icap'))(title('icap'), () => {
  it('answers OPTIONS on its antivirus service, offering RESPMOD and 204', async () => {
    const icap = realDaemon('icap');
    expect(icap).not.toBeNull();
    expect(icap!.service).toBe('avscan');
    const request = `OPTIONS icap://${icap!.host}:${icap!.port}/${icap!.service} ICAP/1.0\r\n`
      + `Host: ${icap!.host}\r\nEncapsulated: null-body=0\r\nConnection: close\r\n\r\n`;
    const reply = await exchange({ host: icap!.host, port: icap!.port }, request, headersDone);
    expect(reply).toMatch(/^ICAP\/1\.0 200 /);
    expect(reply).toMatch(/\r\nMethods: [^\r]*RESPMOD/i);
    expect(reply).toMatch(/\r\nAllow: [^\r]*204/i);
  });
});
