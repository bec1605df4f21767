/*
 * Where a worker thread's code is: beside the module that starts it once built; from dist/ when
 * that module runs from its TypeScript source (the tests), where a worker cannot load .ts files.
 *
 * Takes: the starting module's URL, the folder under dist/ and the files the worker runs (the
 *   first is its entry). Gives: the entry's URL, or an error asking for a build when dist/ is
 *   missing one of them or is older than a source.
 */
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export function workerUrl(from: string, folder: string, sources: string[], what: string): URL {
  const here = new URL(from);
  if (!here.pathname.endsWith('.ts')) return new URL(`./${sources[0]}.js`, here);
  const built = sources.map((f) => new URL(`../dist/${folder}/${f}.js`, here));
  const newestSource = Math.max(...sources.map((f) => statSync(fileURLToPath(new URL(`./${f}.ts`, here))).mtimeMs));
  if (built.some((u) => !existsSync(u)) || newestSource > Math.min(...built.map((u) => statSync(u).mtimeMs))) {
    throw new Error(`${what} runs from dist/: run \`npm run build\` first (npm test does)`);
  }
  return built[0];
}
