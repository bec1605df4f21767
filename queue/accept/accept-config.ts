/*
 * The accept step's settings: the limits a message's data is held to, with their defaults beside
 * them. They sit in the `limits` section beside the ingress's own (mta/ingress/ingress-config.ts
 * assembles the section); `AcceptLimits` is the slice the accept step reads.
 */
import { z } from 'zod';
import { duration, size } from '../../base/base-config.js';

export const messageLimitFields = {
  /** Largest message accepted (SIZE is advertised; 552 beyond it). */
  maxMessageSize: size.prefault('25MB'),
  /** Longest a DATA transfer may take (and the engines' scan of it). */
  dataTimeout: duration.prefault('10m'),
  /*
   * The structure a message may have (accept-structure.ts). Past any of them the message follows
   * `scanning.unscannable` (default: 550 5.6.0), with or without engines. The defaults sit below
   * what the engines handle (mailsplit: 1 MiB per header block, 1000 parts; clamd: MaxRecursion
   * 17), so a padded message is judged here before an engine gives up on it.
   */
  /** Largest header block, of the message or of any MIME part (Exchange's MaxHeaderSize is 256 KB too). */
  maxHeaderSize: size.prefault('256KB'),
  /** Most header fields in one header block. */
  maxHeaderFields: z.number().int().positive().default(1000),
  /** Deepest MIME nesting: multiparts and attached messages inside each other. */
  maxMimeDepth: z.number().int().positive().max(100).default(16),
  /** Most MIME parts in the whole message, containers and attached messages' parts included. */
  maxMimeParts: z.number().int().positive().max(10000).default(500),
  /** Accept NUL bytes in message data (refused with 550 5.6.0 otherwise: RFC 5321 section 4.5.2 text has none). */
  allowNul: z.boolean().default(false),
};

export type AcceptLimits = z.output<z.ZodObject<typeof messageLimitFields>>;
