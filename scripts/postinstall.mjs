// What `npm install` / `npm ci` (with or without --omit=dev) does after the dependencies are in:
//   1. applies patches/ (smtp-server's patch) with patch-package, run from the folder whose
//      node_modules holds smtp-server: this package's own in a git clone or a global install, the
//      application's when npm hoisted it there;
//   2. builds dist/ with tsc (tsconfig.build.json: the runtime sources only) when the TypeScript
//      sources are here, as in a git clone; a package made by `npm pack` ships dist/ built by
//      prepack and no sources, so nothing is compiled;
//   3. builds the native addons (scripts/build-addon.mjs; a machine that cannot loses only what
//      they are for).
// TypeScript and the type packages the build needs are dependencies, not devDependencies, so a
// clone installed with --omit=dev builds too. Any failure of steps 1 and 2 fails the install.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(join(root, 'package.json'));

function step(what, args, cwd) {
  const result = spawnSync(process.execPath, args, { cwd, stdio: 'inherit' });
  if (result.status !== 0) {
    console.error(`ichidan: ${what} failed${result.error ? `: ${result.error.message}` : ''}`);
    process.exit(1);
  }
}

// smtp-server's package.json is not in its exports: from its main file up to node_modules/smtp-server.
let smtpServer = dirname(require.resolve('smtp-server'));
while (!(basename(smtpServer) === 'smtp-server' && basename(dirname(smtpServer)) === 'node_modules')) {
  if (dirname(smtpServer) === smtpServer) {
    console.error('ichidan: smtp-server is not under a node_modules folder: patches/ cannot be applied');
    process.exit(1);
  }
  smtpServer = dirname(smtpServer);
}
const appRoot = dirname(dirname(smtpServer));
// Through patch-package's own function rather than its command, which wants a package.json where
// it runs: npm writes the application's only after every install script has run.
const apply = `require(${JSON.stringify(require.resolve('patch-package/dist/applyPatches.js'))}).applyPatchesForApp(${JSON.stringify({
  appPath: appRoot, patchDir: relative(appRoot, join(root, 'patches')), reverse: false, shouldExitWithError: true, shouldExitWithWarning: false, bestEffort: false,
})})`;
step('applying patches/ with patch-package', ['-e', apply], appRoot);

if (existsSync(join(root, 'tsconfig.build.json'))) {
  step('building dist/ (tsc -p tsconfig.build.json)', [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.build.json'], root);
}

step('building the native addons', [join(root, 'scripts', 'build-addon.mjs')], root);
