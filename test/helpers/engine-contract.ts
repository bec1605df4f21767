/*
 * The contract every engine adapter passes twice: against a fault-injecting fake server of its
 * protocol, and against the real daemon.
 *
 * An adapter's test file calls `fakeContract(subject)` and `realContract(subject, daemon)`. The
 * fake cases: clean, hit, hang past the deadline, nothing listening, garbage reply, connection
 * closed mid-reply, and the server's own "too large" answer. In every case `scan()` must
 * resolve (never throw) with the right outcome, and never later than its deadline allows.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spoolMessage, type Engine, type EngineResult, type ScanContext, type ScanMessage } from '../../engines/engine.js';

export type FaultBehaviour = 'clean' | 'hit' | 'hang' | 'garbage' | 'close-mid-reply' | 'too-large';

export interface FakeServer {
  host: string;
  port: number;
  behaviour: FaultBehaviour;
  /** Connections accepted so far, and how many are still open. */
  accepted: number;
  open: number;
  close(): Promise<void>;
}

/**
 * Starts a TCP server on 127.0.0.1 whose every connection is handed to `handler` with the
 * behaviour current when it connected. The handler speaks just enough of the protocol.
 */
export async function startFakeServer(handler: (socket: Socket, behaviour: FaultBehaviour) => void): Promise<FakeServer> {
  const sockets = new Set<Socket>();
  const fake: FakeServer = {
    host: '127.0.0.1', port: 0, behaviour: 'clean', accepted: 0, open: 0,
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
  const server: Server = createServer((socket) => {
    fake.accepted++;
    fake.open++;
    sockets.add(socket);
    socket.on('close', () => { fake.open--; sockets.delete(socket); });
    socket.on('error', () => undefined);
    handler(socket, fake.behaviour);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  fake.port = (server.address() as { port: number }).port;
  return fake;
}

/** A port on 127.0.0.1 with nothing listening (bound, then released). */
export async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as { port: number };
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export const CRLF = '\r\n';
/** The EICAR test string (68 bytes), built in two parts so this source file itself is not a hit. */
export const EICAR = 'X5O!P%@AP[4\\PZX54(P^)7CC)7}$' + 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*';
/** SpamAssassin's GTUBE, also understood by rspamd. */
export const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*' + 'GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

export function message(headers: Record<string, string>, body: string): string {
  const h = Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join(CRLF);
  return `${h}${CRLF}${CRLF}${body.replace(/\r?\n/g, CRLF)}${CRLF}`;
}

export const CLEAN_MAIL = message({
  From: 'Alice <alice@sender.test>', To: 'bob@example.test', Subject: 'Lunch on Friday',
  Date: 'Wed, 25 Nov 2026 10:00:00 +0000', 'Message-ID': '<lunch-1@sender.test>', 'MIME-Version': '1.0',
  'Content-Type': 'text/plain; charset=utf-8',
}, 'Hi Bob,\n\nAre we still on for lunch on Friday at noon?\n\nAlice\n');

/** EICAR as a base64 attachment. */
export function eicarMail(): string {
  return message({
    From: 'Mallory <mallory@sender.test>', To: 'bob@example.test', Subject: 'Invoice',
    Date: 'Wed, 25 Nov 2026 10:00:00 +0000', 'Message-ID': '<invoice-1@sender.test>', 'MIME-Version': '1.0',
    'Content-Type': 'multipart/mixed; boundary="b1"',
  }, [
    '--b1', 'Content-Type: text/plain', '', 'Please see the attached invoice.', '',
    '--b1', 'Content-Type: application/octet-stream; name="invoice.com"', 'Content-Transfer-Encoding: base64',
    'Content-Disposition: attachment; filename="invoice.com"', '', Buffer.from(EICAR).toString('base64'), '',
    '--b1--', '',
  ].join('\n'));
}

export function gtubeMail(): string {
  return message({
    From: 'Spammer <spam@sender.test>', To: 'bob@example.test', Subject: 'Cheap watches',
    Date: 'Wed, 25 Nov 2026 10:00:00 +0000', 'Message-ID': '<gtube-1@sender.test>',
  }, `Buy now.\n\n${GTUBE}\n`);
}

export const CONTEXT: ScanContext = {
  queueId: '0000000000000TEST', client: '192.0.2.10', helo: 'client.sender.test', sender: 'alice@sender.test',
  recipients: ['bob@example.test'], authUser: null, tenants: ['demo'],
};

/** Writes `text` to a temporary file and returns it as the engines see a spooled message. */
export async function spooled(dir: string, name: string, text: string | Buffer): Promise<ScanMessage> {
  const path = join(dir, name);
  const bytes = typeof text === 'string' ? Buffer.from(text) : text;
  await writeFile(path, bytes);
  return spoolMessage(path, bytes.length);
}

export interface ContractSubject {
  /** Adapter name for test titles. */
  name: string;
  /** A fake server handler for this protocol (see `startFakeServer`). */
  fake: (socket: Socket, behaviour: FaultBehaviour) => void;
  /** An engine aimed at host:port with the given deadline (ms). */
  make(target: { host: string; port: number }, timeout: number): Engine | Promise<Engine>;
  /** A message the engine should find clean, and one it should flag. */
  cleanMessage: string;
  hitMessage: string;
  /** Asserts that a result is this engine's "found it" outcome. */
  expectHit(result: EngineResult): void;
  /** Outcomes accepted for the server's "too large" answer (an error, never clean). */
  tooLarge?: 'too-large' | 'protocol';
}

/** Scans under the runner's rule (signal aborted at `timeout`) and measures how long it took. */
export async function timedScan(engine: Engine, msg: ScanMessage, timeout: number): Promise<{ result: EngineResult; ms: number }> {
  const t0 = performance.now();
  const result = await engine.scan(msg, CONTEXT, AbortSignal.timeout(timeout));
  return { result, ms: performance.now() - t0 };
}

export function fakeContract(subject: ContractSubject): void {
  describe(`${subject.name} adapter against a fault-injecting fake`, () => {
    let fake: FakeServer;
    let dir: string;
    let clean: ScanMessage;
    let hit: ScanMessage;
    const TIMEOUT = 400;
    beforeAll(async () => {
      fake = await startFakeServer(subject.fake);
      dir = await mkdtemp(join(tmpdir(), 'ichidan-contract-'));
      clean = await spooled(dir, 'clean.eml', subject.cleanMessage);
      hit = await spooled(dir, 'hit.eml', subject.hitMessage);
    });
    afterAll(async () => {
      await fake.close();
      await rm(dir, { recursive: true, force: true });
    });
    const run = async (behaviour: FaultBehaviour, msg: () => ScanMessage) => {
      fake.behaviour = behaviour;
      const engine = await subject.make({ host: fake.host, port: fake.port }, TIMEOUT);
      try {
        return await timedScan(engine, msg(), TIMEOUT);
      } finally {
        await engine.close();
      }
    };

    it('reports clean', async () => {
      const { result } = await run('clean', () => clean);
      expect(result.outcome.status).toBe('clean');
    });
    it('reports a hit', async () => {
      const { result } = await run('hit', () => hit);
      subject.expectHit(result);
    });
    it('gives up at its deadline when the server hangs, and closes the connection', async () => {
      const { result, ms } = await run('hang', () => clean);
      expect(result.outcome).toMatchObject({ status: 'error', error: 'timeout' });
      expect(ms).toBeLessThan(TIMEOUT + 250);
      await waitFor(() => fake.open === 0, 'the hung connection to be closed');
    });
    it('reports refused when nothing listens', async () => {
      const engine = await subject.make({ host: '127.0.0.1', port: await closedPort() }, TIMEOUT);
      try {
        const { result } = await timedScan(engine, clean, TIMEOUT);
        expect(result.outcome).toMatchObject({ status: 'error', error: 'refused' });
      } finally {
        await engine.close();
      }
    });
    it('reports a protocol error on a garbage reply', async () => {
      const { result } = await run('garbage', () => clean);
      expect(result.outcome).toMatchObject({ status: 'error', error: 'protocol' });
    });
    it('never reports clean when the connection closes mid-reply', async () => {
      const { result } = await run('close-mid-reply', () => clean);
      expect(result.outcome.status).toBe('error');
      expect(['protocol', 'io']).toContain((result.outcome as { error: string }).error);
    });
    it("reports the server's size limit as an error, never clean", async () => {
      const { result } = await run('too-large', () => clean);
      expect(result.outcome).toMatchObject({ status: 'error', error: subject.tooLarge ?? 'too-large' });
    });
  });
}

export interface RealDaemon {
  host: string;
  port: number;
}

export function realContract(subject: ContractSubject, daemon: () => RealDaemon): void {
  describe(`${subject.name} adapter against the real daemon`, () => {
    let dir: string;
    let engine: Engine;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'ichidan-contract-'));
      engine = await subject.make(daemon(), 20_000);
    });
    afterAll(async () => {
      await engine?.close();
      await rm(dir, { recursive: true, force: true });
    });
    it('reports a clean message clean', async () => {
      const { result } = await timedScan(engine, await spooled(dir, 'clean.eml', subject.cleanMessage), 20_000);
      expect(result.outcome.status, JSON.stringify(result)).toBe('clean');
    });
    it('flags the test message', async () => {
      const { result } = await timedScan(engine, await spooled(dir, 'hit.eml', subject.hitMessage), 20_000);
      subject.expectHit(result);
    });
    it('answers a ping and reports its version', async () => {
      if (engine.ping) expect(await engine.ping(AbortSignal.timeout(5_000))).toBe(true);
      await timedScan(engine, await spooled(dir, 'clean2.eml', subject.cleanMessage), 20_000);
      expect(engine.version()).toMatch(/\S/);
    });
  });
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 2_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
