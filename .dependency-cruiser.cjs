/*
 * The stack, written once: every import points down it. `npm run check:layers` (and CI) runs it.
 *
 *   mta        the process: composition, ingress, admin API, CLI, the root config
 *   queue      the accept step, spool, store, scheduler, retries, notices, operator actions
 *   delivery   routes, sites, pools, the SMTP client, TLS, transcripts, the transparent proxy
 *   engines    the engine contract, runner, verdict and adapters
 *   base       the vocabulary every stage speaks
 *
 * delivery and engines sit side by side: neither imports the other. What a lower stage needs from a
 * higher one is passed in by the composition in mta/. Type-only imports count. Unit tests beside the
 * code (*.test.ts) may build a whole config with the root parser, so the stack rules skip them; they
 * are still checked for cycles.
 */
const STACK = [
  ['mta'],
  ['queue'],
  ['delivery', 'engines'],
  ['base'],
];

const TEST = '\\.test\\.ts$';

/** For each stage: everything it may not import (the stages above it, and its neighbours on its level). */
function stackRules() {
  const rules = [];
  STACK.forEach((level, depth) => {
    const above = STACK.slice(0, depth).flat();
    for (const stage of level) {
      const forbidden = [...above, ...level.filter((s) => s !== stage)];
      if (forbidden.length === 0) continue;
      rules.push({
        name: `${stage}-imports-down-only`,
        comment: `${stage}/ may import only the stages below it (${STACK.slice(depth + 1).flat().join(', ') || 'none'})`,
        severity: 'error',
        from: { path: `^${stage}/`, pathNot: TEST },
        to: { path: `^(${forbidden.join('|')})/` },
      });
    }
  });
  return rules;
}

module.exports = {
  forbidden: [
    {
      name: 'no-cycles',
      comment: 'an import cycle hides which of two files is the lower one',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    ...stackRules(),
    {
      name: 'cli-never-reaches-the-daemon',
      comment: 'the CLI talks to the admin API or opens the database read-only; starting the daemon is the entry point\'s job',
      severity: 'error',
      from: { path: '^mta/cli/' },
      to: { path: '^mta/(index|mta-daemon)\\.ts$', reachable: true },
    },
    {
      name: 'base-is-a-leaf',
      comment: 'base/ holds vocabulary, not a stage',
      severity: 'error',
      from: { path: '^base/' },
      to: { path: '^(mta|queue|delivery|engines|test|bench)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
