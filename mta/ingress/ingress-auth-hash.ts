/*
 * Password checks off the main thread: a small pool of worker threads running bcryptjs.
 *
 * Takes: a password and a bcrypt hash. Gives: true / false, or `null` at once when every thread is
 * busy and `queue` checks already wait (the caller answers 454 4.7.0: try later). A bcrypt compare
 * costs tens of milliseconds of CPU by design; on the main thread, a few clients guessing
 * passwords would stall every SMTP session of the process. A thread that dies fails its check
 * (an error, never a match) and is replaced.
 * Settings: auth.workers, auth.queue.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

/** Runs inside each thread (an eval'd CommonJS script: no build step, no file to ship beside dist/). */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const bcrypt = require(workerData.bcryptjs);
parentPort.on('message', ({ password, hash }) => {
  bcrypt.compare(password, hash).then(
    (ok) => parentPort.postMessage({ ok }),
    (err) => parentPort.postMessage({ error: String((err && err.message) || err) }),
  );
});
`;

interface Job {
  password: string;
  hash: string;
  resolve: (ok: boolean) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  job: Job | null;
}

export class PasswordVerifier {
  readonly #bcryptjs = createRequire(import.meta.url).resolve('bcryptjs');
  readonly #slots: Slot[] = [];
  readonly #waiting: Job[] = [];
  #closed = false;

  constructor(private readonly limits: { workers: number; queue: number }) {
    for (let i = 0; i < limits.workers; i++) this.#slots.push(this.#spawn());
  }

  /** Resolves to whether the password matches; `null` (synchronously) when the pool is saturated. */
  verify(password: string, hash: string): Promise<boolean> | null {
    if (this.#closed) return Promise.reject(new Error('password checks are shut down'));
    const idle = this.#slots.find((s) => s.job === null);
    if (!idle && this.#waiting.length >= this.limits.queue) return null;
    return new Promise<boolean>((resolve, reject) => {
      const job = { password, hash, resolve, reject };
      if (idle) this.#run(idle, job);
      else this.#waiting.push(job);
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const job of this.#waiting.splice(0)) job.reject(new Error('password checks are shut down'));
    await Promise.all(this.#slots.map((s) => s.worker.terminate()));
  }

  #spawn(): Slot {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { bcryptjs: this.#bcryptjs } });
    // Idle threads must not keep the process alive; a stop closes them anyway.
    worker.unref();
    const slot: Slot = { worker, job: null };
    worker.on('message', (m: { ok?: boolean; error?: string }) => {
      const job = slot.job;
      slot.job = null;
      if (job) {
        if (m.error !== undefined) job.reject(new Error(m.error));
        else job.resolve(m.ok === true);
      }
      this.#next(slot);
    });
    const fail = (err: Error) => {
      const job = slot.job;
      slot.job = null;
      job?.reject(err);
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      fail(new Error(`password thread exited (${code})`));
      const i = this.#slots.indexOf(slot);
      if (i === -1 || this.#closed) return;
      this.#slots[i] = this.#spawn();
      this.#next(this.#slots[i]);
    });
    return slot;
  }

  #run(slot: Slot, job: Job): void {
    slot.job = job;
    slot.worker.postMessage({ password: job.password, hash: job.hash });
  }

  #next(slot: Slot): void {
    const job = this.#waiting.shift();
    if (job) this.#run(slot, job);
  }
}
