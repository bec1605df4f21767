// Which of the client's ESMTP parameters go on to the destination, and the lines of a relayed step
// in the order they are said (proxy-params.ts).
import { describe, expect, it } from 'vitest';
import { commandLine, keepParams, relayLines, type RelayStep } from './proxy-params.js';

/** EHLO extensions as SmtpConnection keeps them: keyword → the rest of the line. */
const offers = (...keywords: string[]) => new Map(keywords.map((k) => [k, k === 'SIZE' ? '10240000' : '']));

const ALL = offers('SIZE', '8BITMIME', 'SMTPUTF8', 'DSN', 'PIPELINING');

describe('keepParams: the parameters the destination understands, by the extensions it offered', () => {
  it.each<[string, Map<string, string>, string]>([
    ['SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc', ALL, 'SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc'],
    ['NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@x', ALL, 'NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@x'],
    // each parameter needs its own extension; the others are dropped, not refused
    ['SIZE=1000 BODY=8BITMIME', offers('SIZE'), 'SIZE=1000'],
    ['BODY=8BITMIME SMTPUTF8', offers('8BITMIME'), 'BODY=8BITMIME'],
    ['RET=FULL ENVID=x NOTIFY=NEVER ORCPT=rfc822;b@y', offers('SIZE', '8BITMIME'), ''],
    ['SMTPUTF8', offers('DSN'), ''],
    // parameters the proxy never passes on, whatever is offered
    ['AUTH=<> SIZE=5 XFOO=1', ALL, 'SIZE=5'],
    // keywords in any case, words kept as the client wrote them, white space folded
    ['size=10 body=7bit', ALL, 'size=10 body=7bit'],
    ['  SIZE=10   RET=HDRS  ', ALL, 'SIZE=10 RET=HDRS'],
    ['', ALL, ''],
    ['SIZE=10', new Map(), ''],
  ])('%j offered %j → %j', (params, extensions, kept) => {
    expect(keepParams(params, extensions)).toBe(kept);
  });
});

describe('commandLine: the command with the parameters kept after it', () => {
  it.each<[string, string, Map<string, string>, string]>([
    ['MAIL FROM:<a@x>', 'SIZE=1000 BODY=8BITMIME', ALL, 'MAIL FROM:<a@x> SIZE=1000 BODY=8BITMIME'],
    ['MAIL FROM:<>', 'RET=HDRS', offers('SIZE'), 'MAIL FROM:<>'],
    ['RCPT TO:<b@y>', 'NOTIFY=FAILURE', ALL, 'RCPT TO:<b@y> NOTIFY=FAILURE'],
    ['RCPT TO:<b@y>', '', ALL, 'RCPT TO:<b@y>'],
  ])('%j with %j → %j', (command, params, extensions, line) => {
    expect(commandLine(command, params, extensions)).toBe(line);
  });
});

describe('relayLines: RSET, MAIL FROM, the command, DATA, and where MAIL FROM stands', () => {
  const mail = 'MAIL FROM:<a@x>';
  const rcpt = 'RCPT TO:<b@y>';
  it.each<[RelayStep, string[], number]>([
    [{ reset: false, mail, line: null, data: false }, [mail], 0],
    [{ reset: false, mail, line: rcpt, data: false }, [mail, rcpt], 0],
    [{ reset: true, mail, line: rcpt, data: true }, ['RSET', mail, rcpt, 'DATA'], 1],
    [{ reset: true, mail, line: null, data: false }, ['RSET', mail], 1],
    // MAIL FROM already said on this connection
    [{ reset: false, mail: null, line: rcpt, data: false }, [rcpt], -1],
    [{ reset: false, mail: null, line: rcpt, data: true }, [rcpt, 'DATA'], -1],
    [{ reset: true, mail: null, line: rcpt, data: false }, ['RSET', rcpt], -1],
  ])('%j → %j, MAIL FROM at %i', (step, lines, mailAt) => {
    expect(relayLines(step)).toEqual({ lines, mailAt });
  });
});
