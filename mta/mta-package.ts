/*
 * Where this package is installed: the folder holding its package.json, found from this module
 * (from dist/ once built, or from the sources under vitest), so the files it ships beside the code
 * (config/default.yaml, the native addons) are found wherever npm put it, whatever the current folder.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The nearest folder above this module holding package.json, or null. */
export function packageRoot(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) return null;
    dir = parent;
  }
  return dir;
}
