/*
 * Draining a node and looking at the cluster. Node 1 is a real process (the built CLI) whose
 * destination is down, so its mail stays queued; nodes 2 and 3 run in this process and deliver
 * to a sink on 127.0.0.2. Real redis-server (test/helpers/redis.ts).
 *
 * - `ichidan node drain`: node 1 refuses new connections (421 4.3.2) and new transactions (451
 *   4.3.2), lets the one under way finish, and its queue (that one's mail too) ends up
 *   delivered by the peers to the sink, each recipient once, with its sender, DSN parameters
 *   (RET, ENVID, NOTIFY, ORCPT), tenant and original queue id; `--status` reports it done;
 *   `undrain` takes mail again.
 * - the peers do not judge transferred mail again (their structure limit would refuse it);
 * - transfer parameters from a client that is not a peer (outside cluster.peers, a forged
 *   signature, a stray recipient parameter) are refused with 555 5.5.4; a genuine transfer
 *   repeated is queued once.
 * - a peer that drops the connection after the data: nothing lost, each message delivered once.
 * - `ichidan cluster status`: three nodes, one SIGKILLed listed as gone, --json parses; exit 1
 *   with a one-line reason when not clustered or Redis is away, the local node still shown.
 * - a drain is refused, changing nothing, without cluster.redis, without cluster.secret, with
 *   Redis away or with no live peer; a node without cluster.secret takes no transfer.
 */
import { createServer } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newQueueId } from '../base/base-queue-id.js';
import { recipientParameter, transferParameter } from '../queue/cluster/cluster-transfer.js';
import { baseConfig, startApp, waitUntil, type ConfigInput, type TestApp } from './helpers/app.js';
import { startChild, type ChildIchidan } from './helpers/child.js';
import { fakeNode, runCli, sendMail, startDropper } from './helpers/drain-world.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { redisSupport, startRedis, type TestRedis } from './helpers/redis.js';
import { startSink, type Sink, type SunkMessage } from './helpers/sink.js';

const support = redisSupport();
const SECRET = 'the cluster secret, shared by every node';
const TENANTS = { alpha: { domains: ['alpha.test'] }, beta: { domains: ['beta.test'] } };

function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

describe.skipIf(!support.ok)('draining a node (real Redis, node 1 a real process)', () => {
  let redis: TestRedis;
  let sink: Sink;
  let root: string;
  let n1: ChildIchidan;
  const n1Logs: string[] = [];
  const peers: TestApp[] = [];
  const files: Record<string, string> = {};

  const nodeConfig = (dir: string, node: string, route: { host: string; port: number }, extra: Partial<ConfigInput> = {}) => baseConfig(dir, {
    tenants: TENANTS,
    routes: { 'alpha.test': route, 'beta.test': route, 'held.test': { hold: true } },
    cluster: { redis: redis.url, node, heartbeat: '200ms', leaseTtl: '1s', secret: SECRET, peers: ['127.0.0.1'] },
    ...extra,
  } as Partial<ConfigInput>);

  async function writeConfig(name: string, config: ConfigInput): Promise<string> {
    const file = join(root, `${name}.json`);
    await writeFile(file, JSON.stringify(config));
    files[name] = file;
    return file;
  }

  /** Where a node's queue of one message went: the sink messages that carry its queue id. */
  const carrying = (qid: string) => sink.messages.filter((m) => m.data.toString().includes(`id ${qid}`));
  const logsOf = (msg: string) => peers.flatMap((p) => p.logs.filter((l) => l.msg === msg));

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'ichidan-drain-'));
    redis = await startRedis();
    sink = await startSink({ host: '127.0.0.2' });
    const down = { host: '127.0.0.1', port: await closedPort() };
    const n1Dir = join(root, 'n1');
    const n1File = await writeConfig('n1', nodeConfig(n1Dir, 'n1', down));
    const logs = new PassThrough();
    let partial = '';
    logs.on('data', (d) => {
      const lines = (partial + String(d)).split('\n');
      partial = lines.pop()!;
      n1Logs.push(...lines.filter(Boolean));
    });
    n1 = await startChild(n1File, logs);
    for (const node of ['n2', 'n3']) {
      const dir = join(root, node);
      // A limit every transferred message is past (node 1's Received field and its Subject): were it checked again, it would be refused.
      const build = (d: string) => nodeConfig(d, node, { host: '127.0.0.2', port: sink.port }, { limits: { maxHeaderFields: 1 } } as Partial<ConfigInput>);
      await writeConfig(node, build(dir));
      peers.push(await startApp(build, { dataDir: dir }));
    }
    await waitUntil(async () => (await peers[0].app.cluster!.nodes.list())?.filter((n) => n.alive && n.smtp).length === 3, 10_000, 'three live nodes');
  });

  afterAll(async () => {
    if (n1 && n1.proc.exitCode === null && n1.proc.signalCode === null) {
      n1.proc.kill('SIGTERM');
      await n1.exited;
    }
    for (const p of peers) await p.stop().catch(() => undefined);
    await sink?.close();
    await redis?.stop();
    await rm(root, { recursive: true, force: true });
  });

  it('hands the queue to the peers: each recipient delivered once, envelope, DSN parameters, tenant and queue id kept', async () => {
    const port = n1.ports.mx;
    const sent = [
      { qid: await sendMail(port, 'a@src.test', ['ann@alpha.test NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ann@orig.test'], { mailParams: 'RET=HDRS ENVID=env-1' }), to: ['ann@alpha.test'] },
      { qid: await sendMail(port, 'b@src.test', ['bob@beta.test', 'cat@alpha.test NOTIFY=NEVER']), to: ['bob@beta.test', 'cat@alpha.test'] },
    ];
    for (let i = 0; i < 4; i++) sent.push({ qid: await sendMail(port, `c${i}@src.test`, [`dan${i}@alpha.test`]), to: [`dan${i}@alpha.test`] });
    // Node 1 cannot deliver: its destination is down (and then paused), so everything stays queued there.
    await waitUntil(() => n1Logs.some((l) => l.includes('"msg":"delivery attempt"') && l.includes('"verdict":"deferred"')), 10_000, 'node 1 tried and failed');
    expect(sink.messages).toHaveLength(0);

    // One transaction under way when the drain begins, and one connection open with none.
    const busy = await RawSmtp.open(port);
    await busy.reply();
    await busy.command('EHLO client.test');
    expect(await busy.command('MAIL FROM:<late@src.test>')).toMatch(/^250 /);
    expect(await busy.command('RCPT TO:<fay@alpha.test>')).toMatch(/^250 /);
    const idle = await RawSmtp.open(port);
    await idle.reply();
    await idle.command('EHLO client.test');

    const drain = await runCli(['node', 'drain', '-c', files.n1]);
    expect(drain.stderr).toBe('');
    expect(drain.code).toBe(0);
    expect(drain.stdout).toMatch(/^draining/);

    // Refuses new mail at once, on every listener.
    for (const name of ['mx', 'submission']) {
      const c = await RawSmtp.open(n1.ports[name]);
      expect((await c.reply())[0]).toMatch(/^421 4\.3\.2 /);
      c.close();
    }
    // The open connection starts no new transaction; the one under way finishes, and its mail goes too.
    expect(await idle.command('MAIL FROM:<new@src.test>')).toMatch(/^451 4\.3\.2 /);
    idle.close();
    expect(await busy.command('DATA')).toMatch(/^354 /);
    sent.push({ qid: await busy.finishData('Subject: late\r\n\r\nbody\r\n'), to: ['fay@alpha.test'] });
    busy.close();

    await sink.waitFor(8, 20_000);
    await new Promise((r) => setTimeout(r, 1500));
    expect(sink.messages).toHaveLength(8);
    for (const { qid, to } of sent) {
      const got = carrying(qid);
      expect(got.flatMap((m) => m.rcptTo).sort()).toEqual([...to].sort());
      // The peer queued it under the original id: its own Received field names it, after node 1's.
      for (const m of got) expect(m.data.toString().split(`id ${qid}`).length - 1).toBe(2);
    }
    const [first] = carrying(sent[0].qid);
    expect(first.mailFrom).toBe('a@src.test');
    expect(first.params).toMatchObject({ RET: 'HDRS', ENVID: 'env-1' });
    expect(first.rcptParams[0]).toMatchObject({ NOTIFY: 'SUCCESS,FAILURE', ORCPT: 'rfc822;ann@orig.test' });
    const cat = carrying(sent[1].qid).find((m) => m.rcptTo.includes('cat@alpha.test')) as SunkMessage;
    expect(cat.rcptParams[0]).toMatchObject({ NOTIFY: 'NEVER' });
    // Each recipient kept its tenant on the peer.
    const attempts = logsOf('delivery attempt');
    for (const { qid, to } of sent) {
      for (const rcpt of to) {
        const mine = attempts.filter((l) => l.qid === qid && l.rcpt === rcpt);
        expect(mine.map((l) => l.tenant)).toEqual([rcpt.endsWith('@beta.test') ? 'beta' : 'alpha']);
      }
    }

    await waitUntil(async () => {
      const s = await runCli(['node', 'drain', '--status', '--json', '-c', files.n1]);
      return JSON.parse(s.stdout).finishedAt !== null;
    }, 10_000, 'the drain to finish');
    const status = JSON.parse((await runCli(['node', 'drain', '--status', '--json', '-c', files.n1])).stdout);
    expect(status).toMatchObject({ draining: true, transferred: 8, remaining: {} });
    const human = await runCli(['node', 'drain', '--status', '-c', files.n1]);
    expect(human.stdout).toMatch(/^drained at .*\n.*8 recipients transferred/);
    const transferredLines = () => n1Logs.filter((l) => l.includes('"msg":"transferred"')).length;
    await waitUntil(() => transferredLines() >= 7, 5000, 'node 1 to log each transfer');
    expect(transferredLines()).toBe(7);

    const undrain = await runCli(['node', 'undrain', '-c', files.n1]);
    expect(undrain.code).toBe(0);
    expect(undrain.stdout).toMatch(/^not draining/);
    const c = await RawSmtp.open(n1.ports.mx);
    expect((await c.reply())[0]).toMatch(/^220 /);
    c.close();
  });

  it('refuses transfer parameters from a client that is not a peer, and queues a genuine transfer repeated once', async () => {
    const port = peers[0].port('mx');
    const id = newQueueId();
    const mail = (secret: string, sender = 'x@src.test') => `MAIL FROM:<${sender}> ${transferParameter(secret, { id, from: 'n1', at: Date.now(), sender, ret: null, envid: null, smtputf8: false })}`;
    const rcpt = (secret: string, address: string, tenant: string) => `RCPT TO:<${address}> ${recipientParameter(secret, id, address, { tenant, notify: null, orcpt: null })}`;
    const session = async (localAddress: string) => {
      const c = await RawSmtp.open(port, '127.0.0.1', localAddress);
      await c.reply();
      await c.command('EHLO client.test');
      return c;
    };

    // A valid signature from outside cluster.peers: refused.
    const outsider = await session('127.0.0.9');
    expect(await outsider.command(mail(SECRET))).toMatch(/^555 5\.5\.4 /);
    // Without a transfer, the relay rules hold as always for this client.
    expect(await outsider.command('MAIL FROM:<x@src.test>')).toMatch(/^250 /);
    expect(await outsider.command('RCPT TO:<x@elsewhere.test>')).toMatch(/^5\d\d /);
    outsider.close();

    // From a peer's address, but signed with another secret, or with a stray recipient parameter: refused.
    const forger = await session('127.0.0.1');
    expect(await forger.command(mail('not the secret, but long enough'))).toMatch(/^555 5\.5\.4 /);
    expect(await forger.command('MAIL FROM:<x@src.test>')).toMatch(/^250 /);
    expect(await forger.command(rcpt(SECRET, 'x@held.test', 'beta'))).toMatch(/^555 5\.5\.4 /);
    await forger.command('RSET');
    // A genuine transfer whose recipient carries a parameter made for another address: refused.
    expect(await forger.command(mail(SECRET))).toMatch(/^250 /);
    expect(await forger.command(rcpt(SECRET, 'y@held.test', 'beta').replace('<y@held.test>', '<z@held.test>'))).toMatch(/^555 5\.5\.4 /);
    forger.close();
    expect(peers[0].app.queue.store.message(id)).toBeUndefined();

    // The genuine transfer: queued under its id, the tenant from the parameter, not judged by relay rules.
    const send = async () => {
      const c = await session('127.0.0.1');
      expect(await c.command(mail(SECRET))).toMatch(/^250 /);
      expect(await c.command(rcpt(SECRET, 'x@held.test', 'beta'))).toMatch(/^250 /);
      expect(await c.command('DATA')).toMatch(/^354 /);
      c.send('Received: from n1.test by n1.test; Sun, 6 Dec 2026 20:00:00 +0000\r\nSubject: moved\r\n\r\nbody\r\n.\r\n');
      const reply = (await c.reply()).join('\n');
      c.close();
      return reply;
    };
    // The same message sent as ordinary mail is past the peer's structure limit; transferred, it is not judged again.
    await expect(sendMail(port, 'x@src.test', ['x@alpha.test'], { subject: 'plain\r\nX-Extra: 1' })).rejects.toThrow(/550 5\.6\.0/);
    expect(await send()).toBe(`250 2.0.0 Ok: queued as ${id}`);
    expect(await send()).toBe(`250 2.0.0 Ok: already queued as ${id}`);
    const rows = peers[0].app.queue.store.recipientsOf(id);
    expect(rows.map((r) => [r.address, r.tenant])).toEqual([['x@held.test', 'beta']]);
    // The same id with a recipient not in it yet (a transfer the peer had only partly taken): queued under a new id.
    const other = await session('127.0.0.1');
    expect(await other.command(mail(SECRET))).toMatch(/^250 /);
    expect(await other.command(rcpt(SECRET, 'w@held.test', 'alpha'))).toMatch(/^250 /);
    expect(await other.command('DATA')).toMatch(/^354 /);
    other.send('Subject: more\r\n\r\nbody\r\n.\r\n');
    const reply = (await other.reply()).join('\n');
    other.close();
    const newId = /^250 2\.0\.0 Ok: queued as (\w+)$/.exec(reply)?.[1];
    expect(newId).toBeDefined();
    expect(newId).not.toBe(id);
    expect(peers[0].app.queue.store.recipientsOf(newId!).map((r) => [r.address, r.tenant])).toEqual([['w@held.test', 'alpha']]);
    expect(peers[0].app.queue.store.recipientsOf(id)).toHaveLength(1);
  });

  it('loses nothing when a peer drops the connection mid-transfer', async () => {
    const dropper = await startDropper();
    // Listed first (the registry sorts by name), so the first message is offered to it.
    const fake = fakeNode(redis.client(), 'ichidan', 'n0', { address: '127.0.0.1', port: dropper.port });
    try {
      await waitUntil(async () => (await peers[0].app.cluster!.nodes.list())?.some((n) => n.node === 'n0' && n.alive) === true, 5000, 'the dropper listed');
      const before = sink.messages.length;
      const qids: string[] = [];
      for (let i = 0; i < 4; i++) qids.push(await sendMail(n1.ports.mx, `d${i}@src.test`, [`eve${i}@alpha.test`]));
      const drain = await runCli(['node', 'drain', '-c', files.n1]);
      expect(drain.code).toBe(0);
      await sink.waitFor(before + 4, 20_000);
      await new Promise((r) => setTimeout(r, 1500));
      expect(dropper.drops).toBeGreaterThanOrEqual(1);
      expect(sink.messages).toHaveLength(before + 4);
      for (const qid of qids) expect(carrying(qid)).toHaveLength(1);
      const status = JSON.parse((await runCli(['node', 'drain', '--status', '--json', '-c', files.n1])).stdout);
      expect(status.transferred).toBe(4);
      expect(status.failed).toBeGreaterThanOrEqual(1);
    } finally {
      await fake.stop();
      await dropper.close();
    }
  });

  it('shows the cluster: three nodes, one killed listed as gone; --json parses', async () => {
    const json = await runCli(['cluster', 'status', '--json', '-c', files.n2]);
    expect(json.code).toBe(0);
    const status = JSON.parse(json.stdout);
    expect(status.nodes.map((n: { node: string }) => n.node)).toEqual(['n1', 'n2', 'n3']);
    expect(status.nodes.every((n: { alive: boolean }) => n.alive)).toBe(true);
    expect(status.nodes.find((n: { node: string }) => n.node === 'n1').draining).toBe(true);
    // Each node reports its pressure level (the DNS responder steers by the others').
    for (const n of status.nodes as Array<{ level: string }>) expect(['normal', 'busy', 'overload']).toContain(n.level);
    expect(status.redis).toMatchObject({ connected: true, version: expect.stringMatching(/^\d+\.\d+/) });
    expect(status.redis.rttMs).toBeGreaterThanOrEqual(0);
    expect(status.redis.usedMemoryBytes).toBeGreaterThan(0);
    const human = await runCli(['cluster', 'status', '-c', files.n2]);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^n1\talive\t.*\tyes\t(normal|busy|overload)\t127\.0\.0\.1:\d+$/m);
    expect(human.stdout).toMatch(/^redis redis:\/\/.*: connected, rtt [\d.]+ ms, version \d/m);

    n1.proc.kill('SIGKILL');
    await n1.exited;
    await waitUntil(async () => {
      const s = JSON.parse((await runCli(['cluster', 'status', '--json', '-c', files.n2])).stdout);
      return s.nodes.find((n: { node: string }) => n.node === 'n1').alive === false;
    }, 10_000, 'n1 listed as gone');
    expect((await runCli(['cluster', 'status', '-c', files.n3])).stdout).toMatch(/^n1\tgone\t/m);

    // n3 draining and n1 gone: n2 has no peer to drain to, and nothing changes on it.
    expect((await runCli(['node', 'drain', '-c', files.n3])).code).toBe(0);
    await waitUntil(async () => (await peers[0].app.cluster!.nodes.list())?.find((n) => n.node === 'n3')?.draining === true, 5000, 'n3 listed as draining');
    const none = await runCli(['node', 'drain', '-c', files.n2]);
    expect(none.code).toBe(1);
    expect(none.stderr).toBe('no live peer to drain to (every other node is gone or draining)\n');
    expect(peers[0].app.draining).toBe(false);
    expect((await runCli(['node', 'undrain', '-c', files.n3])).code).toBe(0);
    expect(peers[1].app.draining).toBe(false);
  });

  it('says so, exit 1, when the node is not clustered or Redis is away, and still shows the node itself', async () => {
    const dir = join(root, 'alone');
    const build = (d: string) => baseConfig(d, { tenants: TENANTS } as Partial<ConfigInput>);
    const alone = await startApp(build, { dataDir: dir });
    try {
      const file = await writeConfig('alone', build(dir));
      const status = await runCli(['cluster', 'status', '-c', file]);
      expect(status.code).toBe(1);
      expect(status.stderr).toBe('not clustered: cluster.redis is not set, so this node has no peers\n');
      expect(status.stdout).toMatch(/\tlocal\t/);
      const drain = await runCli(['node', 'drain', '-c', file]);
      expect(drain.code).toBe(1);
      expect(drain.stderr).toMatch(/^this node is not in a cluster \(cluster\.redis is not set\)/);
      const c = await RawSmtp.open(alone.port('mx'));
      expect((await c.reply())[0]).toMatch(/^220 /);
      c.close();
      // A transfer, however well signed, to a node without cluster.secret: refused.
      const c2 = await RawSmtp.open(alone.port('mx'));
      await c2.reply();
      await c2.command('EHLO client.test');
      const param = transferParameter(SECRET, { id: newQueueId(), from: 'n1', at: Date.now(), sender: 'x@src.test', ret: null, envid: null, smtputf8: false });
      expect(await c2.command(`MAIL FROM:<x@src.test> ${param}`)).toMatch(/^555 5\.5\.4 /);
      c2.close();
    } finally {
      await alone.stop();
    }

    // Clustered, but without cluster.secret: the drain is refused, saying so.
    const bare = (d: string) => baseConfig(d, { tenants: TENANTS, cluster: { redis: redis.url, node: 'bare', heartbeat: '200ms', leaseTtl: '1s' } } as Partial<ConfigInput>);
    const bareDir = join(root, 'bare');
    const bareNode = await startApp(bare, { dataDir: bareDir });
    try {
      const drain = await runCli(['node', 'drain', '-c', await writeConfig('bare', bare(bareDir))]);
      expect(drain.code).toBe(1);
      expect(drain.stderr).toBe('cluster.secret is not set: peers would not take the transfer\n');
      expect(bareNode.app.draining).toBe(false);
    } finally {
      await bareNode.stop();
    }

    await redis.kill();
    const away = await runCli(['cluster', 'status', '--json', '-c', files.n2]);
    expect(away.code).toBe(1);
    expect(away.stderr).toMatch(/^Redis is not reachable at redis:\/\/127\.0\.0\.1:\d+\/\d*: only this node is shown\n$/);
    const parsed = JSON.parse(away.stdout);
    expect(parsed).toMatchObject({ clustered: true, node: 'n2', nodes: null, redis: { connected: false } });
    expect(parsed.local.node).toBe('n2');
    const drain = await runCli(['node', 'drain', '-c', files.n3]);
    expect(drain.code).toBe(1);
    expect(drain.stderr).toMatch(/^Redis is not reachable/);
  });
});
