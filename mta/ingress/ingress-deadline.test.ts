import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SlowClientGuard, type DeadlineBreach, type DeadlineSettings } from './ingress-deadline.js';

describe('SlowClientGuard', () => {
  beforeEach(() => { vi.useFakeTimers(); });
  afterEach(() => { vi.useRealTimers(); });

  function guarded(settings: DeadlineSettings) {
    const socket = new EventEmitter();
    const breaches: DeadlineBreach[] = [];
    const guard = new SlowClientGuard(() => settings, (b) => breaches.push(b));
    guard.watch(socket as unknown as Socket);
    return { socket, breaches, guard };
  }

  it('with commandDeadline 0, does not breach at the 354 and keeps the data rate, with commandTimeout as its grace', () => {
    const { socket, breaches, guard } = guarded({ commandDeadline: 0, minDataRate: 1000, commandTimeout: 5000 });
    socket.emit('data', Buffer.from('NOOP tric'));
    vi.advanceTimersByTime(60_000);
    expect(breaches).toEqual([]);
    guard.dataStarted();
    expect(breaches).toEqual([]);
    socket.emit('data', Buffer.alloc(1000));
    vi.advanceTimersByTime(5900);
    expect(breaches).toEqual([]);
    vi.advanceTimersByTime(200);
    expect(breaches).toEqual(['data']);
  });

  it('with minDataRate 0, never breaches during DATA however slow', () => {
    const { socket, breaches, guard } = guarded({ commandDeadline: 1000, minDataRate: 0, commandTimeout: 5000 });
    guard.dataStarted();
    for (let i = 0; i < 100; i++) {
      socket.emit('data', Buffer.from('x'));
      vi.advanceTimersByTime(1000);
    }
    guard.dataEnded();
    expect(breaches).toEqual([]);
  });

  it('uses commandDeadline as the data grace when it is set', () => {
    const { breaches, guard } = guarded({ commandDeadline: 1000, minDataRate: 1000, commandTimeout: 60_000 });
    guard.dataStarted();
    vi.advanceTimersByTime(900);
    expect(breaches).toEqual([]);
    vi.advanceTimersByTime(200);
    expect(breaches).toEqual(['data']);
  });
});
