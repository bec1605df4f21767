import { BlockList, isIPv4 } from 'node:net';
import { describe, expect, it } from 'vitest';
import { GENERAL_QUEUE, KNOWN_QUEUE, knownFilter, MAX_INSTRUCTIONS, parseNetwork, REFUSE_QUEUE, type Instruction } from './admission-known-filter.js';

const NET = -0x100000;

/** The network header of a SYN from `address`: what the program can read below SKF_NET_OFF. */
function header(address: string): Buffer {
  if (isIPv4(address)) {
    const h = Buffer.alloc(20);
    h[0] = 0x45;
    address.split('.').forEach((b, i) => { h[12 + i] = Number(b); });
    return h;
  }
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  expand(address).forEach((g, i) => h.writeUInt16BE(g, 8 + i * 2));
  return h;
}

function expand(address: string): number[] {
  const [head, tail] = address.split('::');
  const left = head ? head.split(':') : [];
  const right = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const fill = tail === undefined ? 0 : 8 - left.length - right.length;
  return [...left, ...Array(fill).fill('0'), ...right].map((g) => Number.parseInt(g, 16));
}

/** A classic BPF machine for the opcodes a known filter uses, as the kernel runs them. */
function run(program: Instruction[], packet: Buffer): number {
  let a = 0;
  for (let pc = 0; pc < program.length; pc++) {
    const { code, jt, jf, k } = program[pc];
    const offset = (k | 0) - NET;
    switch (code) {
      case 0x20: a = packet.readUInt32BE(offset); break;
      case 0x30: a = packet[offset]; break;
      case 0x54: a = (a & k) >>> 0; break;
      case 0x74: a = a >>> k; break;
      case 0x05: pc += k; break;
      case 0x15: pc += a === k ? jt : jf; break;
      case 0x06: return k;
      default: throw new Error(`opcode ${code.toString(16)} at ${pc}`);
    }
  }
  throw new Error('ran off the end');
}

describe('knownFilter', () => {
  it('sends sources in the networks to the known queue and every other to the general one, IPv4 and IPv6', () => {
    const networks = ['192.0.2.0/24', '198.51.100.7', '10.0.0.0/8', '2001:db8:1:2::/64', '2001:db8:ff00::/40', '::ffff:203.0.113.0/120'];
    const f = knownFilter(networks);
    expect(f.networks).toBe(6);
    expect(f.left).toBe(0);
    expect(f.program.length).toBe(f.instructions.length * 8);
    const cases: Array<[string, number]> = [
      ['192.0.2.1', KNOWN_QUEUE], ['192.0.2.255', KNOWN_QUEUE], ['192.0.3.1', GENERAL_QUEUE],
      ['198.51.100.7', KNOWN_QUEUE], ['198.51.100.8', GENERAL_QUEUE],
      ['10.200.3.4', KNOWN_QUEUE], ['11.0.0.1', GENERAL_QUEUE],
      ['203.0.113.9', KNOWN_QUEUE], ['203.0.114.9', GENERAL_QUEUE],
      ['2001:db8:1:2::25', KNOWN_QUEUE], ['2001:db8:1:2:ffff:ffff:ffff:ffff', KNOWN_QUEUE], ['2001:db8:1:3::25', GENERAL_QUEUE],
      ['2001:db8:ff12:3::1', KNOWN_QUEUE], ['2001:db8:fe00::1', GENERAL_QUEUE],
      ['::1', GENERAL_QUEUE],
    ];
    for (const [address, queue] of cases) expect([address, run(f.instructions, header(address))]).toEqual([address, queue]);
  });

  it('agrees with a block list over many addresses', () => {
    const networks: string[] = [];
    const list = new BlockList();
    for (let i = 0; i < 300; i++) {
      const net = `10.${i % 250}.${(i * 7) % 256}.0`;
      networks.push(`${net}/24`);
      list.addSubnet(net, 24, 'ipv4');
    }
    networks.push('172.16.0.0/12');
    list.addSubnet('172.16.0.0', 12, 'ipv4');
    const f = knownFilter(networks);
    expect(f.networks).toBe(301);
    let known = 0;
    for (let i = 0; i < 5000; i++) {
      const address = [10 + (i % 3) * 81, (i * 37) % 256, (i * 101) % 256, i % 256].join('.');
      const want = list.check(address, 'ipv4') ? KNOWN_QUEUE : GENERAL_QUEUE;
      if (want === KNOWN_QUEUE) known++;
      expect(run(f.instructions, header(address))).toBe(want);
    }
    expect(known).toBeGreaterThan(50);
  });

  it('with no network sends everyone to the general queue', () => {
    const f = knownFilter([]);
    expect(f.networks).toBe(0);
    for (const address of ['192.0.2.1', '2001:db8::1']) expect(run(f.instructions, header(address))).toBe(GENERAL_QUEUE);
  });

  it('keeps the first networks when they do not all fit, within the kernel limit, and counts the rest and the bad ones', () => {
    const networks = Array.from({ length: 3000 }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`);
    const f = knownFilter([...networks, 'not a network', '10.0.0.0/33']);
    expect(f.instructions.length).toBeLessThanOrEqual(MAX_INSTRUCTIONS);
    expect(f.networks).toBeGreaterThan(2000);
    expect(f.networks + f.left).toBe(3002);
    expect(run(f.instructions, header('10.0.0.9'))).toBe(KNOWN_QUEUE);
    expect(run(f.instructions, header('10.11.183.9'))).toBe(GENERAL_QUEUE);
    const six = knownFilter(Array.from({ length: 1000 }, (_, i) => `2001:db8:${i.toString(16)}::/64`));
    expect(six.instructions.length).toBeLessThanOrEqual(MAX_INSTRUCTIONS);
    expect(six.networks).toBe(584);
    expect(run(six.instructions, header('2001:db8:247::1'))).toBe(KNOWN_QUEUE);
    expect(run(six.instructions, header('2001:db8:248::1'))).toBe(GENERAL_QUEUE);
  });

  it('under overload sends everyone else to the refusing queue, but blocked networks to the general one, even inside a known network', () => {
    const f = knownFilter(['10.0.0.0/8', '2001:db8::/32'], { blocked: ['10.9.9.0/24', '198.51.100.0/24', '2001:db8:bad::/48'], others: REFUSE_QUEUE });
    expect([f.networks, f.left, f.blocked, f.blockedLeft]).toEqual([2, 0, 3, 0]);
    const cases: Array<[string, number]> = [
      ['10.1.2.3', KNOWN_QUEUE], ['10.9.9.9', GENERAL_QUEUE], ['198.51.100.5', GENERAL_QUEUE], ['192.0.2.1', REFUSE_QUEUE],
      ['2001:db8:1::1', KNOWN_QUEUE], ['2001:db8:bad:1::1', GENERAL_QUEUE], ['2001:db9::1', REFUSE_QUEUE],
    ];
    for (const [address, queue] of cases) expect([address, run(f.instructions, header(address))]).toEqual([address, queue]);
    // In normal times the blocked inside the known still go to the general queue.
    const normal = knownFilter(['10.0.0.0/8'], { blocked: ['10.9.9.0/24'] });
    expect(run(normal.instructions, header('10.9.9.9'))).toBe(GENERAL_QUEUE);
    expect(run(normal.instructions, header('10.9.8.9'))).toBe(KNOWN_QUEUE);
    expect(run(normal.instructions, header('192.0.2.1'))).toBe(GENERAL_QUEUE);
  });

  it('counts a network given twice once', () => {
    expect(knownFilter(['192.0.2.0/24', '192.0.2.9/24', '192.0.2.0/24']).networks).toBe(1);
  });

  it('reads addresses and networks as the config and the known senders write them', () => {
    expect(parseNetwork('192.0.2.77/24')).toEqual({ family: 4, word: 0xc0000200, mask: 0xffffff00 });
    expect(parseNetwork('0.0.0.0/0')).toEqual({ family: 4, word: 0, mask: 0 });
    expect(parseNetwork('2001:db8:0:0:0:0:0:0/64')).toEqual({ family: 6, words: [0x20010db8, 0], masks: [0xffffffff, 0xffffffff] });
    expect(parseNetwork('2001:db8::1')).toEqual({ family: 6, words: [0x20010db8, 0], masks: [0xffffffff, 0xffffffff] });
    expect(parseNetwork('::ffff:192.0.2.1')).toEqual({ family: 4, word: 0xc0000201, mask: 0xffffffff });
    for (const bad of ['', 'example.com', '192.0.2.0/x', '192.0.2.0/24/1', '2001:db8::/129']) expect(parseNetwork(bad)).toBeNull();
  });
});
