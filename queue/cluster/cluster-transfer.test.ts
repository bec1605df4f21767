import { describe, expect, it } from 'vitest';
import { readRecipient, readTransfer, recipientParameter, TRANSFER_MAX_AGE_MS, transferParameter, XFER_PARAM, RCPT_PARAM } from './cluster-transfer.js';

const SECRET = 'a cluster secret of some length';
const NOW = 1_800_000_000_000;
const MSG = { id: '01ABCDEFGH234567', from: 'n1', at: NOW, sender: 's@x.test', ret: 'HDRS', envid: 'env 1', smtputf8: false };
const value = (param: string, name: string) => {
  expect(param.startsWith(`${name}=`)).toBe(true);
  return param.slice(name.length + 1);
};

describe('cluster transfer parameters', () => {
  it('carry the message and each recipient through, signed', () => {
    const mail = value(transferParameter(SECRET, MSG), XFER_PARAM);
    expect(mail).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    expect(readTransfer(SECRET, mail, 's@x.test', NOW + 1000)).toEqual(MSG);
    const rcpt = value(recipientParameter(SECRET, MSG.id, 'r@y.test', { tenant: 'beta', notify: 'SUCCESS,FAILURE', orcpt: 'rfc822;o@y.test' }), RCPT_PARAM);
    expect(readRecipient(SECRET, rcpt, MSG.id, 'r@y.test')).toEqual({ tenant: 'beta', notify: 'SUCCESS,FAILURE', orcpt: 'rfc822;o@y.test' });
  });

  it('do not hold under another secret, another sender, another address or message, or when altered', () => {
    const mail = value(transferParameter(SECRET, MSG), XFER_PARAM);
    expect(readTransfer('another secret, also long', mail, 's@x.test', NOW)).toBeNull();
    expect(readTransfer(SECRET, mail, 'other@x.test', NOW)).toBeNull();
    const [payload, mac] = mail.split('.');
    const forged = Buffer.from(JSON.stringify({ ...MSG, id: '01ZZZZZZZZZZZZZZ' })).toString('base64url');
    expect(readTransfer(SECRET, `${forged}.${mac}`, 's@x.test', NOW)).toBeNull();
    expect(readTransfer(SECRET, `${payload}.${mac.slice(1)}`, 's@x.test', NOW)).toBeNull();
    expect(readTransfer(SECRET, payload, 's@x.test', NOW)).toBeNull();
    expect(readTransfer(SECRET, true, 's@x.test', NOW)).toBeNull();
    const rcpt = value(recipientParameter(SECRET, MSG.id, 'r@y.test', { tenant: 'beta', notify: null, orcpt: null }), RCPT_PARAM);
    expect(readRecipient(SECRET, rcpt, MSG.id, 'q@y.test')).toBeNull();
    expect(readRecipient(SECRET, rcpt, '01ZZZZZZZZZZZZZZ', 'r@y.test')).toBeNull();
    expect(readRecipient('another secret, also long', rcpt, MSG.id, 'r@y.test')).toBeNull();
  });

  it('do not hold once older (or newer) than the replay window', () => {
    const mail = value(transferParameter(SECRET, MSG), XFER_PARAM);
    expect(readTransfer(SECRET, mail, 's@x.test', NOW + TRANSFER_MAX_AGE_MS + 1)).toBeNull();
    expect(readTransfer(SECRET, mail, 's@x.test', NOW - TRANSFER_MAX_AGE_MS - 1)).toBeNull();
  });
});
