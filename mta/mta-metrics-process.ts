/*
 * The process's own health in metrics: Node's runtime and the disks the queue writes to.
 *
 * Takes: the registry (mta-metrics.ts) and the queue's folders (the spool's, the database's).
 * Gives:
 *   Node's process metrics under their standard names (prom-client `collectDefaultMetrics`, no
 *   prefix): process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
 *   process_start_time_seconds, nodejs_eventloop_lag_seconds, nodejs_heap_size_used_bytes,
 *   nodejs_gc_duration_seconds … — the names stock Node.js dashboards and alerts already use.
 *   ichidan_disk_free_bytes{volume}   free bytes for unprivileged writers on the file system of
 *                                     the spool (volume="spool") and of the queue database
 *                                     (volume="database"); read with statfs when scraped, at most
 *                                     once per DISK_CACHE_MS.
 */
import { statfs } from 'node:fs/promises';
import { collectDefaultMetrics, Gauge, type Registry } from 'prom-client';

export interface Volumes {
  spool: string;
  database: string;
}

const DISK_CACHE_MS = 5000;

export function processHealthMetrics(registry: Registry, volumes: () => Volumes | null): void {
  collectDefaultMetrics({ register: registry });
  let readAt = -Infinity;
  let free: Array<[string, number]> = [];
  new Gauge({
    name: 'ichidan_disk_free_bytes', help: 'Free bytes on the file systems of the spool and of the queue database', labelNames: ['volume'], registers: [registry],
    async collect() {
      const where = volumes();
      if (!where) return;
      if (Date.now() - readAt >= DISK_CACHE_MS) {
        readAt = Date.now();
        free = await Promise.all(Object.entries(where).map(async ([volume, dir]) => {
          const s = await statfs(dir).catch(() => null);
          return [volume, s ? s.bavail * s.bsize : NaN] as [string, number];
        }));
      }
      this.reset();
      for (const [volume, bytes] of free) if (Number.isFinite(bytes)) this.set({ volume }, bytes);
    },
  });
}
