/*
 * The admin API's settings (`admin`), with their defaults beside them; the root schema
 * (mta/mta-config-schema.ts) assembles them and checks that a TCP port comes with a token.
 */
import { z } from 'zod';
import { duration, ipAddress } from '../../base/base-config.js';

export const adminSchema = z.strictObject({
  /** The admin API's unix socket (mode 0600); default dataDir/admin.sock. */
  socket: z.string().min(1).optional(),
  /** Also serve the admin API on this loopback TCP port (0 = any free port); needs `token`. */
  port: z.number().int().min(0).max(65535).optional(),
  address: ipAddress.refine((a) => /^127\./.test(a) || a === '::1', 'a loopback address (127.0.0.0/8 or ::1)').default('127.0.0.1'),
  /** Reload by itself when the config file changes (as SIGHUP does); a bad file is reported and ignored. */
  watchConfig: z.boolean().default(false),
  /** When set, every admin request must carry `Authorization: Bearer <token>` (the CLI reads ICHIDAN_ADMIN_TOKEN). */
  token: z.string().min(16, 'at least 16 characters').optional(),
  /** The web dashboard at /dashboard/ (admin-dashboard.ts); its login is admin.token. */
  dashboard: z.strictObject({
    enabled: z.boolean().default(true),
    /** How long a login lasts. */
    session: duration.refine((ms) => ms >= 60_000, 'at least "1m"').prefault('8h'),
    /** How often the history the overview charts is sampled (admin-history.ts): the last hour at this step, 24 h at one a minute. */
    sample: duration.refine((ms) => ms >= 1000 && ms <= 60_000, 'from "1s" to "1m"').prefault('10s'),
  }).prefault({}),
}).prefault({});
