/*
 * Reads a growing log file a piece at a time, so that polling a relay's log for its deliveries costs
 * the new lines only, not the whole file again.
 *
 * Takes: the file's path (it may not exist yet) and a function called with each complete line.
 * Gives: `poll()`, which hands over every line completed since the previous poll.
 */
import { closeSync, existsSync, openSync, readSync } from 'node:fs';

export class LogTail {
  #offset = 0;
  #partial = '';

  constructor(private readonly path: string, private readonly onLine: (line: string) => void) {}

  poll(): void {
    if (!existsSync(this.path)) return;
    const fd = openSync(this.path, 'r');
    try {
      const chunk = Buffer.alloc(1 << 20);
      for (;;) {
        const n = readSync(fd, chunk, 0, chunk.length, this.#offset);
        if (n === 0) break;
        this.#offset += n;
        const lines = (this.#partial + chunk.toString('latin1', 0, n)).split('\n');
        // A line still being written is kept back until its newline arrives.
        this.#partial = lines.pop()!;
        for (const line of lines) this.onLine(line);
      }
    } finally {
      closeSync(fd);
    }
  }
}
