/*
 * The real DNS peers of the admission tests: `dig` (dnsutils) as the client that asks Ichidan's
 * responder, `unbound` as the resolver between it and a sending MTA.
 *
 * Gives: `dnsPeersSupport(tools)`, checked synchronously (suites decide `skipIf` at collection
 * time); with CI set, a missing tool is an error instead of a skip (.ci/run installs them).
 * `dig(args)`, run without blocking the event loop: its output, with the status and flags of the
 * response picked out.
 * Network: none of its own; dig asks only the server it is given.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';

export const TOOLS = { dig: '/usr/bin/dig', unbound: '/usr/sbin/unbound', postfix: '/usr/lib/postfix/sbin/master' } as const;
const PACKAGES: Record<keyof typeof TOOLS, string> = { dig: 'dnsutils', unbound: 'unbound', postfix: 'postfix' };

export function dnsPeersSupport(tools: Array<keyof typeof TOOLS>): { ok: true } | { ok: false; reason: string } {
  const missing = tools.filter((t) => !existsSync(TOOLS[t]));
  if (missing.length === 0) return { ok: true };
  const reason = `${missing.map((t) => `${TOOLS[t]} (apt install ${PACKAGES[t]})`).join(', ')} missing`;
  if (process.env.CI) throw new Error(`${reason}: CI must install them (.ci/run)`);
  return { ok: false, reason };
}

export interface DigResult {
  output: string;
  /** NOERROR, NXDOMAIN, REFUSED, SERVFAIL, … ('' when no response came). */
  status: string;
  flags: string[];
  /** The answer section's records as [name, ttl, type, data]. */
  answers: string[][];
  authority: string[][];
  additional: string[][];
}

/** `dig @server -p port ...args`, with +norecurse, a 2 s timeout and one try. */
export function dig(server: string, port: number, args: string[]): Promise<DigResult> {
  return new Promise((resolve, reject) => {
    execFile(TOOLS.dig, [`@${server}`, '-p', String(port), '+norecurse', '+time=2', '+tries=1', ...args], { encoding: 'utf8', timeout: 10_000 }, (error, stdout) => {
      if (error && !stdout) return reject(error);
      resolve(parseDig(stdout));
    });
  });
}

function parseDig(output: string): DigResult {
  const status = /status: (\w+)/.exec(output)?.[1] ?? '';
  const flags = /;; flags: ([^;]*);/.exec(output)?.[1].trim().split(/\s+/) ?? [];
  const section = (title: string) => {
    const m = new RegExp(`;; ${title} SECTION:\\n([\\s\\S]*?)(?:\\n\\n|$)`).exec(output);
    return m ? m[1].split('\n').filter((l) => l && !l.startsWith(';')).map((l) => {
      const [name, ttl, , type, ...data] = l.split(/\s+/);
      return [name, ttl, type, data.join(' ')];
    }) : [];
  };
  return { output, status, flags, answers: section('ANSWER'), authority: section('AUTHORITY'), additional: section('ADDITIONAL') };
}
