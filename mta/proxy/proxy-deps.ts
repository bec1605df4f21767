/*
 * What a proxy session is given from the rest of the process, built from one config snapshot:
 * the egress's routes, sites and TLS plan, the queue's turns, admission and throttle control,
 * the shared connection pools and the transcript sink. The session's destination side
 * (proxy-destination.ts) sees only these functions, so it can be tested with fakes and never
 * reaches into the queue itself.
 * Settings: delivery.heloName, delivery.connectTimeout, delivery.replyTimeout,
 * delivery.transcripts.*, proxy.slotWait.
 */
import type { SmtpPool } from '../../delivery/index.js';
import type { Queue } from '../../queue/index.js';
import type { Config } from '../mta-config-schema.js';
import type { ProxyDeps } from './proxy-destination.js';

/** `outbound`: the local ends of the proxy's own connections (a redirected one of those is a loop). */
export function proxySessionDeps(config: Config, queue: Queue, pool: SmtpPool, outbound: Set<string>): ProxyDeps {
  const egress = queue.egress;
  const transcripts = config.delivery.transcripts;
  return {
    heloName: config.delivery.heloName ?? config.hostname,
    connectTimeout: config.delivery.connectTimeout,
    replyTimeout: config.delivery.replyTimeout,
    ca: egress.ca,
    route: (domain) => egress.sites.route(domain),
    tlsPlan: (domain, via, hops) => egress.tlsPlan(domain, via, hops),
    siteLimits: (key) => egress.sites.limits(key),
    known: (address, port) => egress.sites.byAddress(address, port),
    acquire: (tenant, site, leave) => queue.acquireLive(tenant, site, config.proxy.slotWait, leave),
    transcripts: transcripts.enabled ? { sink: queue.recordTranscript, maxBytes: transcripts.maxBytesPerSession } : null,
    signal: (site, source, tenant, signal) => queue.control.onSignal(site, source, tenant, signal),
    outbound,
    pool,
    admit: (site, source, tenant) => queue.scheduler.admit(site, source, tenant),
    connections: (site, source) => queue.scheduler.connections(site, source),
  };
}
