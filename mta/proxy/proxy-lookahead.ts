/*
 * The recipients a pipelining client (RFC 2920) sent right after the RCPT smtp-server hands over,
 * read off the chunk they came in, so that they go to the destination in that RCPT's group instead
 * of one round trip each. smtp-server hands commands over one at a time; the later RCPTs' replies
 * are then kept for them (proxy-session.ts). Only a line smtp-server will surely hand over too is
 * taken: its own parser reads it (the connection's), it has an address, no parameter twice, and at
 * most the DSN parameters NOTIFY and ORCPT, valid as smtp-server checks them; the first line that is
 * anything else ends the run.
 * Takes: the chunk, the command line handed over (as received, without its line end), a parser.
 * Gives: the whole RCPT lines after it, in order, and whether DATA ended the chunk right after them.
 */

/** What smtp-server's address parser gives for a command line: false when it refuses the line. */
export type AddressParse = false | { address: string; args: false | Record<string, string | boolean>; duplicate?: string };

export interface FollowingLines {
  lines: Buffer[];
  /** The chunk ended with DATA right after the last of `lines`. */
  data: boolean;
}

/** At most this many recipients go ahead of their turn in one group. */
export const MOST_AHEAD = 100;

const NONE: FollowingLines = { lines: [], data: false };

/** Where the line end at `at` ends (after its LF), or -1 when no line end is there. */
function afterLineEnd(chunk: Buffer, at: number): number {
  if (chunk[at] === 0x0a) return at + 1;
  if (chunk[at] === 0x0d && chunk[at + 1] === 0x0a) return at + 2;
  return -1;
}

/** The command lines after the whole line `raw` in `chunk` (which must hold it once), up to the first that is not a RCPT. */
export function rcptLinesAfter(chunk: Buffer | null, raw: Buffer | undefined): FollowingLines {
  if (!chunk || !raw || raw.length === 0) return NONE;
  let end = -1;
  for (let from = 0; ;) {
    const at = chunk.indexOf(raw, from);
    if (at < 0) break;
    from = at + 1;
    const after = afterLineEnd(chunk, at + raw.length);
    if (after < 0 || (at > 0 && chunk[at - 1] !== 0x0a)) continue;
    // The same line twice: which one was handed over is not known.
    if (end >= 0) return NONE;
    end = after;
  }
  if (end < 0) return NONE;
  const lines: Buffer[] = [];
  let pos = end;
  while (lines.length < MOST_AHEAD) {
    const lf = chunk.indexOf(0x0a, pos);
    if (lf < 0) break;
    const line = chunk.subarray(pos, lf > pos && chunk[lf - 1] === 0x0d ? lf - 1 : lf);
    if (/^RCPT TO:/i.test(line.toString('latin1', 0, 8))) {
      lines.push(line);
      pos = lf + 1;
      continue;
    }
    return { lines, data: lines.length > 0 && lf + 1 === chunk.length && /^DATA$/i.test(line.toString('latin1')) };
  }
  return { lines, data: false };
}

const NOTIFY = new Set(['NEVER', 'SUCCESS', 'FAILURE', 'DELAY']);

/** Would smtp-server hand this parsed RCPT to the application (given a MAIL FROM that stands)? */
export function handedOver(parsed: AddressParse): parsed is Exclude<AddressParse, false> {
  if (!parsed || !parsed.address || parsed.duplicate) return false;
  if (!parsed.args) return true;
  for (const [key, value] of Object.entries(parsed.args)) {
    if (typeof value !== 'string' || !value) return false;
    if (key === 'NOTIFY') {
      const values = value.toUpperCase().split(',');
      if (!values.every((v) => NOTIFY.has(v)) || (values.includes('NEVER') && values.length > 1)) return false;
    } else if (key === 'ORCPT') {
      if (!/^[a-z0-9!#$%&'*+/=?^_`{|}~-]+;./i.test(value)) return false;
    } else {
      return false;
    }
  }
  return true;
}
