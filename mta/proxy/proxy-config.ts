/*
 * The transparent proxy's settings (`proxy`), with their defaults beside them; the root schema
 * (mta/mta-config-schema.ts) assembles them and checks that `scan` names known tenants.
 */
import { z } from 'zod';
import { duration } from '../../base/base-config.js';

/** The transparent proxy (listeners with role proxy): legacy MTAs' redirected sessions relayed live. */
export const proxySchema = z.strictObject({
  /** How long a proxied session waits for a turn at its destination site; then its client gets 451 4.4.5. */
  slotWait: duration.prefault('30s'),
  /**
   * Scan proxied mail (true: every tenant's; or a list of tenant names): spooled, scanned by the
   * engines, refused to the client before the destination sees it. Otherwise streamed through.
   */
  scan: z.union([z.boolean(), z.array(z.string().min(1))]).default(false),
  /** One JSON line per relayed transaction is appended to this file. */
  eventsFile: z.string().min(1).optional(),
  /** Selected outcomes are posted to this URL as a Slack-compatible payload ({"text": ...}). */
  webhook: z.strictObject({
    url: z.url({ protocol: /^https?$/, error: 'an http(s) URL' }),
    on: z.array(z.enum(['delivered', 'rejected', 'deferred', 'failed'])).default(['rejected', 'deferred', 'failed']),
  }).optional(),
}).prefault({});

export type ProxyConfig = z.output<typeof proxySchema>;
