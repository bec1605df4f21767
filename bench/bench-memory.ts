/*
 * Memory while receiving big messages: Ichidan's peak resident memory (VmHWM) after a 1 MB message,
 * after a 40 MB message it accepts, and after a 200 MB message over its 50 MB limit (refused with
 * 552 at the end of DATA). The message bytes are streamed to the spool as they arrive, so the peak
 * should not grow with the message size. Prints the figures and writes bench/results/memory-<date>.json.
 * Last line: `RESULT {json}` (bench-result.ts): peak_rss_mb_1mb, peak_rss_mb_40mb, peak_rss_mb_200mb, then
 *   every row by its path.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { printResult } from './bench-result.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = process.env.ICHIDAN_CLI ?? join(ROOT, 'dist', 'mta', 'mta-main.js');

async function peakKb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]);
}

/** Sends one message of `size` bytes over a raw socket; resolves with the final reply. */
function sendMessage(port: number, size: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let buf = '';
    let step = 0;
    const line = 'x'.repeat(998) + '\r\n';
    const script = ['EHLO mem.test\r\n', 'MAIL FROM:<mem@source.test>\r\n', 'RCPT TO:<sink@far.test>\r\n', 'DATA\r\n'];
    s.on('data', (d) => {
      buf += d.toString();
      if (!/\r\n$/.test(buf) || /^\d{3}-/m.test(buf.split('\r\n').filter(Boolean).pop() ?? '')) return;
      const reply = buf;
      buf = '';
      if (step < script.length) {
        s.write(script[step++]);
        return;
      }
      if (step === script.length) {
        step++;
        let sent = 0;
        const pump = () => {
          while (sent < size) {
            sent += line.length;
            if (!s.write(line)) return s.once('drain', pump);
          }
          s.write('.\r\n');
        };
        pump();
        return;
      }
      s.end('QUIT\r\n');
      resolve(reply.trim());
    });
    s.on('error', reject);
  });
}

async function main(): Promise<void> {
  await mkdir(join(ROOT, 'var'), { recursive: true });
  const dir = await mkdtemp(join(ROOT, 'var', 'bench-mem-'));
  const port = 20000 + Math.floor(Math.random() * 20000);
  const config = join(dir, 'config.yaml');
  await writeFile(config, [
    `dataDir: ${dir}`,
    'log: { level: warn }',
    `listeners: [{ name: mx, role: mx, port: ${port} }]`,
    'trustedNetworks: [127.0.0.1/32]',
    'limits: { maxMessageSize: 50MB }',
    'routes: { "*": { hold: true } }',
    '',
  ].join('\n'));
  const proc = spawn(process.execPath, [CLI, 'start', '-c', config], { stdio: ['ignore', 'ignore', 'inherit'] });
  try {
    for (let i = 0; i < 100; i++) {
      const up = await new Promise<boolean>((r) => { const c = connect(port, '127.0.0.1', () => { c.destroy(); r(true); }); c.on('error', () => r(false)); });
      if (up) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const rows: Array<{ message: string; reply: string; peakMB: number }> = [];
    for (const [name, size] of [['1 MB', 1 << 20], ['40 MB (accepted)', 40 << 20], ['200 MB (over the 50 MB limit)', 200 << 20]] as const) {
      const reply = await sendMessage(port, size);
      const peakMB = (await peakKb(proc.pid!)) / 1024;
      rows.push({ message: name, reply: reply.split('\r\n').pop()!, peakMB: Math.round(peakMB) });
      console.log(`${name.padEnd(30)} peak RSS ${peakMB.toFixed(0).padStart(4)} MB   ${reply.split('\r\n').pop()}`);
    }
    const when = new Date().toISOString();
    await writeFile(join(ROOT, 'bench', 'results', `memory-${when.slice(0, 10)}.json`), JSON.stringify({ when, node: process.version, rows }, null, 2) + '\n');
    const peak = (prefix: string) => rows.find((r) => r.message.startsWith(prefix))?.peakMB;
    printResult(rows, { peak_rss_mb_1mb: peak('1 MB'), peak_rss_mb_40mb: peak('40 MB'), peak_rss_mb_200mb: peak('200 MB') });
  } finally {
    proc.kill('SIGTERM');
    await new Promise((r) => proc.on('exit', r));
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
