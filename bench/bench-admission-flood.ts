/*
 * The admission benchmark's flood, in a worker thread of its own: a thousand connections a second
 * keep an event loop busy, and the known senders' timings, taken in the main thread, should not
 * include that (in the paper's scenario the flood comes from other machines). For the same reason the
 * thread runs at a lower scheduling priority (its nice value, per thread on Linux): on this one
 * machine its user-space work takes the cores' spare time, not the time of the server it floods, as
 * a flood from elsewhere would (the kernel's work for its connections still runs on these cores).
 * Both threads time their attempts against one origin, so the flood's attempts line up with the
 * known senders'.
 *
 * Takes: the target, the rate, the most attempts in flight, the message size, the reply timeout,
 *   the thread's nice value and the run's clock (its origin goes to the worker).
 * Gives: the thread loaded ahead of time (its start-up is not the flood's), `start()` at the
 *   flood's time, and `stop(drainMs)`, which ends the flood as a Pacer's stop does and resolves
 *   with its attempts, the attempts skipped for the in-flight cap and those cut at the end.
 */
import { setPriority } from 'node:os';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { Clock, floodAddress, messageBody, Pacer, type Attempt, type SenderPlan, type Target } from './bench-admission-load.js';

interface FloodSettings { target: Target; rate: number; maxInFlight: number; size: number; timeoutMs: number; domain: string; nice: number; origin: number }
export interface FloodResult { attempts: Attempt[]; skipped: number; cut: number }

/** The flood's senders: any address of 127.64.0.0/10, each message its own sender. */
export function floodPlan(target: Target, size: number, domain: string, timeoutMs: number): SenderPlan {
  const body = messageBody(size, 'offers@flood.bench.test', `staff@${domain}`);
  return {
    target, address: () => floodAddress(), timeoutMs,
    envelope: (n) => ({ from: `offers${n}@flood.bench.test`, to: `staff${n % 50}@${domain}`, body }),
  };
}

/** The flood's thread, loaded and waiting: `start` it at the flood's time, `stop` it to get its attempts. */
export async function prepareFlood(settings: Omit<FloodSettings, 'origin'>, clock: Clock): Promise<{ start(): void; stop(drainMs: number): Promise<FloodResult> }> {
  const worker = new Worker(new URL(import.meta.url), { workerData: { ...settings, origin: clock.origin } satisfies FloodSettings });
  const next = () => new Promise<unknown>((resolve, reject) => {
    const onExit = (code: number) => reject(new Error(`the flood's thread ended (code ${code}) before it answered`));
    worker.once('message', (m) => { worker.off('error', reject); worker.off('exit', onExit); resolve(m); });
    worker.once('error', reject);
    worker.once('exit', onExit);
  });
  await next(); // ready
  return {
    start: () => worker.postMessage({ start: true }),
    stop: async (drainMs) => {
      const result = next() as Promise<FloodResult>;
      worker.postMessage({ stop: drainMs });
      const r = await result;
      await worker.terminate();
      return r;
    },
  };
}

if (!isMainThread && parentPort && (workerData as FloodSettings | undefined)?.origin !== undefined) {
  const s = workerData as FloodSettings;
  const port = parentPort;
  // Linux: pid 0 is the calling thread, so only the flood's thread is lowered.
  if (s.nice !== 0) setPriority(0, s.nice);
  let pacer: Pacer | null = null;
  port.on('message', async (m: { start?: true; stop?: number }) => {
    if (m.start) pacer = new Pacer(floodPlan(s.target, s.size, s.domain, s.timeoutMs), new Clock(s.origin), s.rate, s.maxInFlight);
    if (m.stop !== undefined) {
      await pacer?.stop(m.stop);
      port.postMessage({ attempts: pacer?.attempts ?? [], skipped: pacer?.skipped ?? 0, cut: pacer?.cut ?? 0 } satisfies FloodResult);
    }
  });
  port.postMessage('ready');
}
