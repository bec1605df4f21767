/*
 * The queue's depth, read off the main thread. Both depth reads scan every queued recipient (an
 * index, and for the dashboard's per-domain history a lookup of each one's message too): on the
 * main thread that stopped every session for about 17 ms per 10,000 queued recipients each time
 * the history was sampled (every 10 s by default; 174 ms with 100,000 queued), which a node with
 * a backlog would also see as event-loop delay under admission. A worker thread with a read-only
 * connection of its own (queue-depth-worker.ts) runs them instead.
 *
 * Takes: the queue database's file. Gives: `rows()` (per tenant and state, for the metrics; cached
 *   5 s in the thread) and `domains()` (per tenant and domain, for the history), each a promise;
 *   `close()`. The thread starts at the first request; one that fails is started again at the next.
 */
import { Worker } from 'node:worker_threads';
import { workerUrl } from '../base/base-worker-url.js';
import type { DepthRow } from './queue-depth.js';
import type { QueueDepth } from './queue-depth-domains.js';
import type { DepthAnswer, DepthRequest } from './queue-depth-worker.js';

/** The files the thread runs (the first is its entry). */
const SOURCES = ['queue-depth-worker', 'queue-depth', 'queue-depth-domains'];

interface Waiting { resolve(value: unknown): void; reject(err: Error): void }

export class DepthThread {
  #worker: Worker | null = null;
  #seq = 0;
  readonly #waiting = new Map<number, Waiting>();
  #closed = false;
  /** A per-tenant read under way: the metrics' two gauges, collected together, share it. */
  #rows: Promise<DepthRow[]> | null = null;

  constructor(private readonly file: string) {}

  rows(): Promise<DepthRow[]> {
    return (this.#rows ??= (this.#ask('rows') as Promise<DepthRow[]>).finally(() => { this.#rows = null; }));
  }

  domains(): Promise<QueueDepth> {
    return this.#ask('domains') as Promise<QueueDepth>;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const worker = this.#worker;
    this.#worker = null;
    this.#failAll(new Error('the queue is closed'));
    await worker?.terminate();
  }

  #ask(kind: DepthRequest['kind']): Promise<unknown> {
    if (this.#closed) return Promise.reject(new Error('the queue is closed'));
    let worker: Worker;
    try {
      worker = this.#worker ?? this.#start();
    } catch (err) {
      return Promise.reject(err as Error);
    }
    const id = ++this.#seq;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      worker.postMessage({ id, kind } satisfies DepthRequest);
    });
  }

  #start(): Worker {
    const worker = new Worker(workerUrl(import.meta.url, 'queue', SOURCES, 'the queue depth thread'), { workerData: { file: this.file } });
    // Never what keeps the process alive.
    worker.unref();
    worker.on('message', (answer: DepthAnswer) => {
      const waiting = this.#waiting.get(answer.id);
      if (!waiting) return;
      this.#waiting.delete(answer.id);
      if (answer.ok) waiting.resolve(answer.value);
      else waiting.reject(new Error(`queue depth: ${answer.error}`));
    });
    const failed = (err: Error) => {
      if (this.#worker !== worker) return;
      this.#worker = null;
      this.#failAll(err);
    };
    worker.on('error', failed);
    worker.on('exit', (code) => failed(new Error(`the queue depth thread exited (code ${code})`)));
    this.#worker = worker;
    return worker;
  }

  #failAll(err: Error): void {
    for (const waiting of this.#waiting.values()) waiting.reject(err);
    this.#waiting.clear();
  }
}
