// The `ichidan` command line as an operator meets it, the built executable run for real: help and
// exit 0 on every command of the tree (walked, so a new command is covered by itself), the version,
// a bash completion built from the tree, one-line errors without a stack trace (status 2 for a usage
// error, 1 when the config, the database or the running process is missing or answers nonsense),
// and --json that parses, against a running Ichidan.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildProgram } from '../mta/cli/cli-commands.js';
import { baseConfig, startApp, type TestApp } from './helpers/app.js';
import { CLI } from './helpers/child.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function ichidan(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

/** Runs them all, a few at a time (the machine has two cores). */
async function all(lines: string[][]): Promise<Run[]> {
  const out: Run[] = new Array(lines.length);
  let next = 0;
  const worker = async () => {
    while (next < lines.length) {
      const i = next++;
      out[i] = await ichidan(lines[i]);
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  return out;
}

/** Every command below the program, as the words that name it. */
function commands(cmd: Command, path: string[] = []): Array<{ path: string[]; cmd: Command }> {
  return cmd.commands.flatMap((c) => [{ path: [...path, c.name()], cmd: c }, ...commands(c, [...path, c.name()])]);
}

const program = buildProgram(async () => {});
const tree = commands(program);
const leaves = tree.filter((c) => c.cmd.commands.length === 0);
const groups = tree.filter((c) => c.cmd.commands.length > 0);
/** A stack trace's frames, which no output may hold. */
const STACK = /\n\s+at /;

describe('the ichidan command line', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-cli-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('prints help and exits 0 for the program, every command and every subcommand', async () => {
    expect(tree.length).toBeGreaterThan(40);
    // `help COMMAND` at every level: "ichidan help queue", "ichidan queue help corrupt".
    const helpAt = [{ path: [] as string[], cmd: program }, ...groups].map((g) => [...g.path, 'help', g.cmd.commands[0].name()]);
    const lines = [['--help'], ['help'], ...tree.map((c) => [...c.path, '--help']), ...helpAt];
    const runs = await all(lines);
    runs.forEach((r, i) => {
      const path = lines[i].filter((w) => w !== '--help' && w !== 'help').join(' ');
      expect({ line: lines[i], code: r.code, stderr: r.stderr }).toEqual({ line: lines[i], code: 0, stderr: '' });
      expect(r.stdout).toMatch(new RegExp(`^Usage: ichidan${path ? ` ${path}` : ''} `));
    });
    // A group lists its commands, and the program says what its exit status means.
    expect(runs[0].stdout).toContain('Exit status: 0 done; 1 failed or refused (the reason on stderr); 2 a usage error.');
    expect(runs[lines.findIndex((l) => l.join(' ') === 'queue --help')].stdout).toMatch(/^\s+hold \[options\]/m);
    // The bare program prints its help too.
    const bare = await ichidan([]);
    expect(bare.code).toBe(0);
    expect(bare.stdout).toMatch(/^Usage: ichidan /);
  }, 180_000);

  it("prints package.json's version", async () => {
    const { version } = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) expect(await ichidan([flag])).toEqual({ code: 0, stdout: `${version}\n`, stderr: '' });
  });

  it('writes a bash completion built from the command tree: every group completes to its commands, options and file names', async () => {
    const script = await ichidan(['completion', 'bash']);
    expect(script.code).toBe(0);
    const file = join(dir, 'completion.bash');
    await writeFile(join(dir, 'config.yaml'), '');
    // One bash for every question: the words typed so far, and what completing the last one offers.
    const asks: string[][] = [
      ...groups.map((g) => ['ichidan', ...g.path, '']),
      ['ichidan', 'que'],
      ['ichidan', '-c', join(dir, 'conf')],
      ['ichidan', 'queue', 'hold', '--me'],
      ['ichidan', '-c', 'x.yaml', 'queue', 'corrupt', 'sh'],
      ['ichidan', 'egress', 'events', '--last', ''],
    ];
    const driver = asks.map((words) => `COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _ichidan; echo "\${COMPREPLY[*]}"`).join('\n');
    await writeFile(file, `${script.stdout}\n${driver}\n`);
    const out = await new Promise<string>((resolve, reject) => execFile('bash', [file], (err, stdout) => (err ? reject(err) : resolve(stdout))));
    const answers = out.split('\n');
    groups.forEach((g, i) => {
      const offered = answers[i].split(' ');
      for (const sub of g.cmd.commands) expect(offered, g.path.join(' ')).toContain(sub.name());
      expect(offered).toContain('--help');
    });
    const rest = answers.slice(groups.length);
    expect(rest[0]).toBe('queue');
    expect(rest[1]).toBe(join(dir, 'config.yaml'));
    expect(rest[2]).toBe('--message');
    expect(rest[3]).toBe('show');
    expect(rest[4]).toBe('');
    // zsh takes the same script through its bash compatibility.
    const zsh = await ichidan(['completion', 'zsh']);
    expect(zsh.code).toBe(0);
    expect(zsh.stdout).toMatch(/^#compdef ichidan\nautoload -U \+X bashcompinit && bashcompinit\n/);
    expect(zsh.stdout).toContain(script.stdout);
  }, 60_000);

  it('answers a usage error on every command with one line and status 2, never a stack trace', async () => {
    const lines = leaves.map((l) => [...l.path, '--no-such-option']);
    const runs = await all(lines);
    runs.forEach((r, i) => {
      const path = leaves[i].path.join(' ');
      // A command with a required option names that first.
      const required = leaves[i].cmd.options.find((o) => o.mandatory);
      const line = required ? `required option '${required.flags}' not specified` : "unknown option '--no-such-option'";
      expect({ path, ...r }).toEqual({ path, code: 2, stdout: '', stderr: `ichidan: ${line} (see 'ichidan ${path} --help')\n` });
    });
    const cases: Array<[string[], string]> = [
      [['frobnicate'], "ichidan: unknown command 'frobnicate' for 'ichidan' (ichidan start|check-config|"],
      [['senders', 'frobnicate', 'x'], "ichidan: unknown command 'frobnicate' for 'ichidan senders' (ichidan senders list|show|pin|block|forget; see --help)\n"],
      [['queue', 'frobnicate'], "ichidan: unknown command 'frobnicate' for 'ichidan queue' (ichidan queue status|hold|release|purge|corrupt"],
      [['senders'], 'ichidan: a command is needed: ichidan senders list|show|pin|block|forget'],
      [['scans', 'show'], "ichidan: missing required argument 'id' (see 'ichidan scans show --help')\n"],
      [['engines', 'disable', 'clamd'], "ichidan: required option '--reason <text>' not specified (see 'ichidan engines disable --help')\n"],
      [['egress', 'events', '--last', 'many'], "ichidan: option '--last <n>' argument 'many' is invalid. a positive whole number is needed"],
      [['queue', 'hold'], 'ichidan: queue hold: name what it applies to: --message ID, --tenant T or --site S\n'],
      [['completion', 'fish'], "ichidan: command-argument value 'fish' is invalid for argument 'shell'. Allowed choices are bash, zsh."],
      [['start', '--worker', '2'], 'ichidan: --worker is for commands about a running worker; start takes --workers N\n'],
    ];
    const answers = await all(cases.map(([args]) => args));
    answers.forEach((r, i) => {
      expect(r.code, cases[i][0].join(' ')).toBe(2);
      expect(r.stderr.startsWith(cases[i][1]), r.stderr).toBe(true);
      expect(r.stderr.split('\n')).toHaveLength(2);
    });
  }, 180_000);

  it('answers a missing or broken config, a missing database and an unreachable or garbled running process with one line and status 1', async () => {
    const dataDir = join(dir, 'data');
    const good = join(dir, 'good.yaml');
    await writeFile(good, `dataDir: ${JSON.stringify(dataDir)}\n`);
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'queue: { maxAge: soon }\n');
    const missing = join(dir, 'nothing.yaml');
    const socket = join(dataDir, 'admin.sock');
    const one = async (args: string[], line: string | RegExp) => {
      const r = await ichidan(args);
      expect({ args, code: r.code, stdout: r.stdout }).toEqual({ args, code: 1, stdout: '' });
      expect(r.stderr).not.toMatch(STACK);
      if (typeof line === 'string') expect(r.stderr).toBe(`${line}\n`);
      else expect(r.stderr).toMatch(line);
    };
    await one(['queue', '-c', missing], `ichidan: ${missing}: cannot read the file: ENOENT: no such file or directory, open '${missing}'`);
    await one(['reload', '--config', bad], new RegExp(`^ichidan: ${bad}: queue\\.maxAge: a duration such as [^\\n]*\\n$`));
    await one(['queue', '-c', good], `ichidan: no queue database at ${dataDir}/queue.db (dataDir ${dataDir}: has Ichidan run with this config?)`);
    await one(['engines', 'list', '-c', good], `ichidan: cannot reach the running process at ${socket}: no such socket (is Ichidan running with this config?)`);
    // Something at the socket's path that is not a listening socket: refused.
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dataDir, { recursive: true });
    await writeFile(socket, '');
    await one(['reload', '-c', good], `ichidan: cannot reach the running process at ${socket}: connection refused (is Ichidan running with this config?)`);
    await rm(socket);
    // A queue database that is not one: the driver's error, as one line (no stack trace escapes).
    await writeFile(join(dataDir, 'queue.db'), 'this is not a database, but long enough to look like a header of one\n'.repeat(20));
    await one(['queue', '-c', good], /^ichidan: [^\n]*not a database[^\n]*\n$/);
    await rm(join(dataDir, 'queue.db'));
    // A process on the socket that answers something other than JSON.
    const server: Server = createServer((_req, res) => res.end('<html>not the admin API</html>'));
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    try {
      await one(['engines', 'list', '-c', good], new RegExp(`^ichidan: cannot reach the running process at ${socket}: the answer is not JSON \\([^\\n]*\\)\\n$`));
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  }, 120_000);

  describe('against a running Ichidan', () => {
    let t: TestApp;
    let file: string;
    beforeAll(async () => {
      t = await startApp((d) => baseConfig(d));
      file = join(t.dataDir, 'cli.yaml');
      await writeFile(file, `dataDir: ${JSON.stringify(t.dataDir)}\n`);
    });
    afterAll(async () => {
      await t?.stop();
    });

    it('prints JSON that parses for every command that prints data', async () => {
      const lines = [
        ['queue'], ['queue', 'status'], ['queue', 'corrupt'], ['suppression', 'list'], ['egress'], ['egress', 'events'], ['quarantine'],
        ['engines', 'list'], ['engines', 'events'], ['engines', 'stats'], ['sessions'], ['admission', 'status'],
      ].map((l) => [...l, '--json', '-c', file]);
      const runs = await all(lines);
      runs.forEach((r, i) => {
        expect({ line: lines[i].join(' '), code: r.code, stderr: r.stderr }).toEqual({ line: lines[i].join(' '), code: 0, stderr: '' });
        expect(() => JSON.parse(r.stdout), lines[i].join(' ')).not.toThrow();
      });
      const [queue, status] = runs.map((r) => JSON.parse(r.stdout) as Record<string, unknown>);
      expect(queue).toEqual({ counts: [], bounced: [], corrupt: [] });
      expect(status).toEqual(queue);
      expect(JSON.parse(runs[7].stdout)).toMatchObject({ generation: 1, engines: expect.any(Array) });
      // Not clustered: status 1 and the reason on stderr, and still JSON on stdout.
      const cluster = await ichidan(['cluster', 'status', '--json', '-c', file]);
      expect(cluster.code).toBe(1);
      expect(JSON.parse(cluster.stdout)).toMatchObject({ clustered: false });
      // The running process's refusal is its own words, one line, status 1.
      const scan = await ichidan(['scans', 'show', 'NOSUCHID', '--json', '-c', file]);
      expect(scan).toEqual({ code: 1, stdout: '', stderr: 'no scan record for NOSUCHID\n' });
    }, 120_000);
  });
});
