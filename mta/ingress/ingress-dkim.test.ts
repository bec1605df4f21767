// Which clients' mail is signed, and with whose keys: a table over the kinds of sender.
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DkimKeys } from '../../queue/accept/accept-dkim-keys.js';
import { parseConfig } from '../mta-config.js';
import { dkimSigningFor } from './ingress-dkim.js';
import { Policy } from './ingress-policy.js';

let dir: string;
let snapshot: { policy: Policy; dkim: DkimKeys };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ichidan-ingress-dkim-'));
  const key = join(dir, 'k.pem');
  await writeFile(key, generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }) as string);
  const config = parseConfig({
    trustedNetworks: ['10.0.0.0/8'],
    tenants: {
      acme: { domains: ['acme.test'], networks: ['192.0.2.0/24'], dkim: [{ domain: 'acme.test', selector: 's', key, algorithm: 'ed25519-sha256' }] },
      beta: { domains: ['beta.test'], networks: ['198.51.100.0/24'], dkim: [{ domain: 'beta.test', selector: 's', key, algorithm: 'ed25519-sha256' }] },
      plain: { domains: ['plain.test'], networks: ['203.0.113.0/24'] },
    },
    users: [
      { name: 'ann', password: '$2b$10$TEDCb/Iks/50BtWEkXbvJ.RjnH8OjvAEP5opDiqXfo1cmxivF9mz2', tenant: 'acme' },
      { name: 'pat', password: '$2b$10$TEDCb/Iks/50BtWEkXbvJ.RjnH8OjvAEP5opDiqXfo1cmxivF9mz2', tenant: 'plain' },
    ],
  });
  snapshot = { policy: new Policy(config), dkim: new DkimKeys(config.tenants) };
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('which mail is signed, with whose keys', () => {
  it.each([
    ['an authenticated user, its tenant\'s domain', '233.252.0.1', 'ann', 'acme.test', ['acme.test']],
    ['an authenticated user, another tenant\'s domain', '233.252.0.1', 'ann', 'beta.test', []],
    ['an authenticated user of a tenant without keys', '10.1.1.1', 'pat', 'acme.test', null],
    ['a tenant\'s network, its domain', '192.0.2.7', null, 'acme.test', ['acme.test']],
    ['a tenant\'s network, another tenant\'s domain', '192.0.2.7', null, 'beta.test', []],
    ['a tenant\'s network without keys', '203.0.113.5', null, 'acme.test', null],
    ['a global trusted network: whichever tenant signs for the domain', '10.1.1.1', null, 'beta.test', ['beta.test']],
    ['a stranger (inbound mail for a hosted domain)', '233.252.0.1', null, 'acme.test', null],
  ] as const)('%s', (_what, address, authUser, fromDomain, signed) => {
    const signing = dkimSigningFor(snapshot, { address, authUser });
    if (signed === null) expect(signing).toBeUndefined();
    else expect(signing!.keys(fromDomain).map((k) => k.domain)).toEqual(signed);
  });
});
