/*
 * A sink's RCPT answers chosen by the recipient's local part, for retry and bounce scenarios:
 *   soft-N…       451 4.2.1 for the first N attempts, then 250
 *   hard…         550 5.1.1 always
 *   always-soft…  451 4.3.2 always
 *   anything else 250
 * Takes: the address and the attempt number (1-based), as helpers/sink.ts's RcptScript.
 */
import type { RcptScript } from './sink.js';

export const scripted: RcptScript = (address, attempt) => {
  const local = address.split('@')[0];
  const soft = /^soft-(\d+)/.exec(local);
  if (soft && attempt <= Number(soft[1])) return { code: 451, text: '4.2.1 mailbox busy, try later' };
  if (local.startsWith('hard')) return { code: 550, text: '5.1.1 no such user here' };
  if (local.startsWith('always-soft')) return { code: 451, text: '4.3.2 come back later' };
  return undefined;
};
