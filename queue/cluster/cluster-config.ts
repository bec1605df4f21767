/*
 * The cluster's settings (`cluster`), with their defaults beside them: the Redis that nodes share
 * limits and operator state through, this node's name, the workers one machine runs, and how
 * leases and the local fallback behave. Without `cluster.redis` a node runs alone, exactly as
 * before; the root schema (mta/mta-config-schema.ts) refuses more than one worker without Redis.
 */
import { z } from 'zod';
import { cidr, duration } from '../../base/base-config.js';

const redisUrl = z.string().refine((s) => {
  try {
    const u = new URL(s);
    return u.protocol === 'redis:' || u.protocol === 'rediss:';
  } catch {
    return false;
  }
}, 'a Redis URL such as "redis://127.0.0.1:6379/0" (rediss:// for TLS)');

export const clusterSchema = z.strictObject({
  /** The Redis (or Valkey) every node of the cluster names; absent: this node shares nothing. */
  redis: redisUrl.optional(),
  /** This node's name in the cluster, unique among its nodes; default the host name and a digest of dataDir. */
  node: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$/, 'letters, digits, ".", "_", ":" and "-"').optional(),
  /** Key prefix, so several clusters can share one Redis. */
  prefix: z.string().regex(/^[A-Za-z0-9._:-]{1,40}$/, 'letters, digits, ".", "_", ":" and "-"').default('ichidan'),
  /** Node processes on this machine sharing the listening ports: a number, or "auto" for one per core. */
  workers: z.union([z.number().int().min(1).max(256), z.literal('auto')]).default(1),
  /** A lease (a connection slot at a destination) a node stops renewing returns to the others after this. */
  leaseTtl: duration.prefault('10s'),
  /** How often a node renews its leases and reports its load. */
  heartbeat: duration.prefault('1s'),
  /** A Redis reply slower than this counts as Redis away for that decision (local fallback). */
  timeout: duration.prefault('500ms'),
  /**
   * While Redis is away each node takes this many nodes' worth of each cap (1/N of it); default
   * the number of live nodes last seen in Redis.
   */
  fallbackNodes: z.number().int().min(1).max(10_000).optional(),
  /**
   * The secret every node of the cluster shares: a drain signs what it hands a peer (tenant,
   * original queue id, DSN parameters) with it, and a node honours such a transfer only when the
   * signature is right. Absent: this node neither drains to peers nor takes transfers.
   */
  secret: z.string().min(16, 'at least 16 characters').max(512).optional(),
  /** Addresses or networks peers connect from; when given, a transfer from anywhere else is refused whatever it carries. */
  peers: z.array(cidr).default([]),
}).prefault({});

export type ClusterConfig = z.output<typeof clusterSchema>;
