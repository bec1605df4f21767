/*
 * The proxy benchmark's load generator (test/helpers/pipelined-load.ts, run from dist/ as the
 * benchmark runs it) against a tiny SMTP server on 127.0.0.1 that answers each command 10 ms after
 * it came in and records, for each reply, how many commands had arrived unanswered by then. A
 * pipelining client has MAIL FROM, RCPT TO and DATA there at once; a lockstep one (pipelining 0)
 * never more than the one being answered.
 * Needs: dist/ built by tsc.
 */
import { execFile } from 'node:child_process';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';

const LOAD = join(import.meta.dirname, '..', 'dist', 'test', 'helpers', 'pipelined-load.js');
const ANSWER_DELAY_MS = 10;

interface Answered { command: string; waiting: number }

/** A server that records, per reply, the verb answered and how many commands were unanswered then. */
function recordingServer(offerPipelining: boolean): { server: Server; answered: Answered[] } {
  const answered: Answered[] = [];
  const server = createServer((socket) => {
    let buffer = '';
    let inData = false;
    let body = '';
    const queue: string[] = [];
    let busy = false;
    const reply = (text: string) => socket.write(`${text}\r\n`);
    const answer = (): void => {
      if (busy || queue.length === 0) return;
      busy = true;
      setTimeout(() => {
        const waiting = queue.length;
        const line = queue.shift()!;
        const command = line.split(/[ :]/)[0].toUpperCase();
        answered.push({ command, waiting });
        if (command === 'EHLO') reply(`250-tiny.test\r\n${offerPipelining ? '250-PIPELINING\r\n' : ''}250 8BITMIME`);
        else if (command === 'DATA') {
          inData = true;
          reply('354 go ahead');
        } else if (command === 'QUIT') {
          reply('221 bye');
          socket.end();
        } else reply('250 ok');
        busy = false;
        answer();
      }, ANSWER_DELAY_MS);
    };
    socket.setEncoding('latin1');
    socket.on('error', () => undefined);
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      for (;;) {
        if (inData) {
          const end = (body + buffer).indexOf('\r\n.\r\n');
          if (end < 0) {
            body += buffer;
            buffer = '';
            break;
          }
          const all = body + buffer;
          buffer = all.slice(end + 5);
          body = '';
          inData = false;
          answered.push({ command: 'end of data', waiting: 0 });
          reply('250 queued');
          continue;
        }
        const eol = buffer.indexOf('\r\n');
        if (eol < 0) break;
        // A client sends the body only after 354, which switches the reading to data.
        queue.push(buffer.slice(0, eol));
        buffer = buffer.slice(eol + 2);
      }
      answer();
    });
    socket.write('220 tiny.test ESMTP\r\n');
  });
  return { server, answered };
}

let server: Server | undefined;
afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

async function run(offerPipelining: boolean, pipelining: '0' | '1' | undefined, reuse: '0' | '1', recipients?: number): Promise<{ report: { accepted: number; failed: number; failures: string[] }; answered: Answered[] }> {
  const world = recordingServer(offerPipelining);
  server = world.server;
  await new Promise<void>((resolve) => world.server.listen(0, '127.0.0.1', resolve));
  const port = (world.server.address() as AddressInfo).port;
  const args = [LOAD, '127.0.0.1', String(port), '3', '1', '300', reuse, ...(pipelining === undefined ? [] : [pipelining]), ...(recipients === undefined ? [] : [String(recipients)])];
  const { stdout } = await promisify(execFile)(process.execPath, args, { timeout: 30_000 });
  return { report: JSON.parse(stdout), answered: world.answered };
}

describe('the proxy benchmark load generator', () => {
  it('pipelines MAIL FROM, RCPT TO and DATA by default: all three are in before MAIL FROM is answered', async () => {
    const { report, answered } = await run(true, undefined, '1');
    expect(report).toMatchObject({ accepted: 3, failed: 0 });
    const mails = answered.filter((a) => a.command === 'MAIL');
    expect(mails).toHaveLength(3);
    for (const mail of mails) expect(mail.waiting).toBe(3);
  });

  it('sends every recipient of a message in the same write when asked for several', async () => {
    const { report, answered } = await run(true, '1', '1', 4);
    expect(report).toMatchObject({ accepted: 3, failed: 0 });
    const mails = answered.filter((a) => a.command === 'MAIL');
    expect(mails).toHaveLength(3);
    // MAIL, four RCPTs and DATA, all in before MAIL FROM is answered.
    for (const mail of mails) expect(mail.waiting).toBe(6);
    expect(answered.filter((a) => a.command === 'RCPT')).toHaveLength(12);
  });

  it('in lockstep (pipelining 0) sends one command per reply, whether or not the server offers PIPELINING', async () => {
    for (const offer of [true, false]) {
      for (const reuse of ['0', '1'] as const) {
        const { report, answered } = await run(offer, '0', reuse);
        expect(report).toMatchObject({ accepted: 3, failed: 0 });
        const commands = answered.filter((a) => a.command !== 'end of data');
        // EHLO, then MAIL, RCPT, DATA per message, QUIT once per connection.
        expect(commands.filter((a) => a.command === 'MAIL')).toHaveLength(3);
        expect(commands.filter((a) => a.command === 'RCPT')).toHaveLength(3);
        expect(commands.filter((a) => a.command === 'DATA')).toHaveLength(3);
        expect(commands.filter((a) => a.command === 'QUIT')).toHaveLength(reuse === '1' ? 1 : 3);
        for (const a of commands) expect(a, `${a.command} with ${a.waiting} commands in`).toMatchObject({ waiting: 1 });
        await new Promise<void>((resolve) => server!.close(() => resolve()));
        server = undefined;
      }
    }
  });

  it('refuses a pipelining run against a server that does not offer PIPELINING, and exits', async () => {
    const { report } = await run(false, '1', '1');
    expect(report).toMatchObject({ accepted: 0, failed: 3 });
    expect(report.failures[0]).toMatch(/does not offer PIPELINING/);
  });
});
