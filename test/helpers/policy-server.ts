/*
 * An HTTPS server on loopback serving MTA-STS policies (RFC 8461 3.3) by Host header, with a
 * certificate the test chooses; it counts requests per host and can be taken "down" (every
 * connection reset) to show that cached policies still apply.
 */
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';

export interface PolicyServer {
  port: number;
  /** Policy text per host name ("mta-sts.example.test"); edit to change what is served. */
  policies: Map<string, string>;
  requests: Map<string, number>;
  down: boolean;
  close(): Promise<void>;
}

export async function startPolicyServer(host: string, tls: { key: string; cert: string }, policies: Record<string, string>): Promise<PolicyServer> {
  const state: PolicyServer = {
    port: 0, policies: new Map(Object.entries(policies)), requests: new Map(), down: false,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
  const server = createServer({ key: tls.key, cert: tls.cert }, (req, res) => {
    const name = String(req.headers.host ?? '').toLowerCase();
    state.requests.set(name, (state.requests.get(name) ?? 0) + 1);
    if (state.down) {
      req.socket.destroy();
      return;
    }
    const text = state.policies.get(name);
    if (req.url !== '/.well-known/mta-sts.txt' || text === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end(text);
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  state.port = (server.address() as AddressInfo).port;
  return state;
}
