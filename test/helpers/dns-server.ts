/*
 * A DNS server on loopback for routing tests: serves MX, A, AAAA, PTR and TXT records from a zone map,
 * NXDOMAIN for names it does not know, and can be told to SERVFAIL a name. Every query it
 * receives is recorded, so a test can show that lookups went here and nowhere else.
 */
import dns2 from 'dns2';

const { Packet } = dns2 as unknown as { Packet: any };

export interface Zone {
  mx?: Array<{ exchange: string; priority: number }>;
  a?: string[];
  aaaa?: string[];
  ptr?: string[];
  /** One TXT record per string; strings past 255 bytes are sent as several character-strings. */
  txt?: string[];
  servfail?: boolean;
}

export interface TestDns {
  address: string;
  port: number;
  server: string;
  queries: Array<{ name: string; type: number }>;
  zones: Map<string, Zone>;
  close(): Promise<void>;
}

/** RFC 1035 §3.3.14: a TXT record is a sequence of strings of at most 255 bytes each. */
function characterStrings(text: string): Buffer[] {
  const bytes = Buffer.from(text);
  const parts: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += 255) parts.push(bytes.subarray(i, i + 255));
  return parts.length ? parts : [Buffer.alloc(0)];
}

export async function startDns(zones: Record<string, Zone>): Promise<TestDns> {
  const map = new Map(Object.entries(zones).map(([k, v]) => [k.toLowerCase(), v]));
  const queries: TestDns['queries'] = [];
  const server = (dns2 as any).createServer({
    udp: true,
    handle: (request: any, send: (r: any) => void) => {
      const response = Packet.createResponseFromRequest(request);
      const [q] = request.questions;
      const name = String(q.name).toLowerCase();
      queries.push({ name, type: q.type });
      const zone = map.get(name);
      if (!zone) {
        response.header.rcode = Packet.RCODE.NXDOMAIN;
      } else if (zone.servfail) {
        response.header.rcode = Packet.RCODE.SERVFAIL;
      } else if (q.type === Packet.TYPE.MX) {
        for (const mx of zone.mx ?? []) response.answers.push({ name: q.name, type: Packet.TYPE.MX, class: Packet.CLASS.IN, ttl: 60, exchange: mx.exchange, priority: mx.priority });
      } else if (q.type === Packet.TYPE.A) {
        for (const address of zone.a ?? []) response.answers.push({ name: q.name, type: Packet.TYPE.A, class: Packet.CLASS.IN, ttl: 60, address });
      } else if (q.type === Packet.TYPE.PTR) {
        for (const domain of zone.ptr ?? []) response.answers.push({ name: q.name, type: Packet.TYPE.PTR, class: Packet.CLASS.IN, ttl: 60, domain });
      } else if (q.type === Packet.TYPE.TXT) {
        for (const text of zone.txt ?? []) response.answers.push({ name: q.name, type: Packet.TYPE.TXT, class: Packet.CLASS.IN, ttl: 60, data: characterStrings(text) });
      } else if (q.type === Packet.TYPE.AAAA) {
        for (const address of zone.aaaa ?? []) response.answers.push({ name: q.name, type: Packet.TYPE.AAAA, class: Packet.CLASS.IN, ttl: 60, address });
      }
      send(response);
    },
  });
  await new Promise<void>((resolve) => {
    server.on('listening', () => resolve());
    server.listen({ udp: { port: 0, address: '127.0.0.1' } });
  });
  const { port } = server.addresses().udp;
  return {
    address: '127.0.0.1', port, server: `127.0.0.1:${port}`, queries, zones: map,
    close: () => new Promise<void>((resolve) => { server.close(); resolve(); }),
  };
}
