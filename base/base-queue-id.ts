/*
 * Queue ids: 16 characters of Crockford base32, time-ordered.
 *
 * The first 9 characters are the milliseconds since the epoch (good until the year 8888), the last 7
 * a counter seeded at random each millisecond, so ids sort by arrival (`ORDER BY id` is arrival order)
 * and stay unique within one process even at many thousand ids per millisecond.
 */
import { randomInt } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const COUNTER_DIGITS = 7;
const COUNTER_SPACE = 32 ** COUNTER_DIGITS;

function encode(n: number, digits: number): string {
  let out = '';
  for (let i = 0; i < digits; i++) {
    out = ALPHABET[n % 32] + out;
    n = Math.floor(n / 32);
  }
  return out;
}

let lastMs = 0;
let counter = 0;

export function newQueueId(now = Date.now()): string {
  if (now > lastMs) {
    lastMs = now;
    counter = randomInt(0, COUNTER_SPACE / 2);
  } else {
    counter++;
    if (counter >= COUNTER_SPACE) {
      lastMs++;
      counter = 0;
    }
  }
  return encode(lastMs, 9) + encode(counter, COUNTER_DIGITS);
}

export function queueIdTime(id: string): number {
  let n = 0;
  for (const ch of id.slice(0, 9)) n = n * 32 + ALPHABET.indexOf(ch);
  return n;
}

export const QUEUE_ID_PATTERN = /^[0-9A-HJKMNP-TV-Z]{16}$/;
