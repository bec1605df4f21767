/*
 * What a benchmark has started, so that a failure or Ctrl-C part-way through still stops every
 * daemon and removes every folder it made.
 *
 * Takes: stop functions, registered as things start.
 * Gives: `cleanUp()`, which runs them newest first (each failure reported, none stopping the rest);
 * `cleanUpOnSignals()`, which does the same on SIGINT / SIGTERM before exiting; and `sleep(ms)`.
 */

type Stop = () => Promise<void>;

const stops: Stop[] = [];

/** Registers a stop function; the returned function runs it now and forgets it. */
export function onCleanup(stop: Stop): () => Promise<void> {
  stops.push(stop);
  return async () => {
    const i = stops.lastIndexOf(stop);
    if (i >= 0) stops.splice(i, 1);
    await stop();
  };
}

let running: Promise<void> | null = null;

/** A call while one is under way (a signal during the cleanup after an error) waits for that one. */
export function cleanUp(): Promise<void> {
  running ??= (async () => {
    for (const stop of stops.splice(0).reverse()) await stop().catch((err: Error) => console.error(`cleanup: ${err.message}`));
  })().finally(() => { running = null; });
  return running;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

/**
 * Stops everything on SIGINT / SIGTERM, then exits. A second signal does not cut the cleanup short
 * (it may be unmounting a file system): it waits for the same one.
 */
export function cleanUpOnSignals(): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      cleanUp().finally(() => process.exit(130));
    });
  }
}
