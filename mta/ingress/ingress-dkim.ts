/*
 * Which mail is DKIM-signed: mail a tenant sends out, never mail arriving for a hosted domain.
 *
 * Takes: the client of a transaction (its address, its AUTH user) and the snapshot's relay
 *   policy and DKIM keys.
 * Gives: what the accept step signs this client's mail with (queue/accept/accept-dkim-keys.ts),
 *   or nothing. Outbound mail is mail from an authenticated user (signed with its tenant's keys)
 *   or from a trusted network (a tenant's `networks`: that tenant's keys; the global
 *   trustedNetworks: the keys of whichever tenant signs for the From: domain, as OpenDKIM signs for
 *   its InternalHosts). Anyone else is a stranger delivering to a hosted domain: never signed.
 *   The keys are then chosen by the message's From: domain, once its header block has arrived.
 * Settings: tenants.<name>.dkim, tenants.<name>.networks, trustedNetworks, users[].tenant.
 */
import type { DkimSigning } from '../../queue/accept/accept-dkim-keys.js';
import type { Snapshot } from '../mta-snapshot.js';
import type { ClientContext } from './ingress-policy.js';

export function dkimSigningFor(snapshot: Pick<Snapshot, 'policy' | 'dkim'>, client: Pick<ClientContext, 'address' | 'authUser'>): DkimSigning | undefined {
  const { policy, dkim } = snapshot;
  if (dkim.size === 0) return undefined;
  if (client.authUser !== null) {
    const tenant = policy.tenantOfUser(client.authUser);
    return tenant === undefined ? undefined : dkim.signingFor(tenant) ?? undefined;
  }
  if (!policy.isTrusted(client.address)) return undefined;
  return dkim.signingFor(policy.tenantOfClient(client.address) ?? null) ?? undefined;
}
