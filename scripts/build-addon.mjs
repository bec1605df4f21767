// Builds native/original-dst (the SO_ORIGINAL_DST addon of the transparent proxy) with the node-gyp
// that ships with npm, against the Node headers already on the machine: npm's nodedir when set,
// else the prefix the running node was installed under, so nothing is downloaded.
//
// Takes: npm's lifecycle environment (npm_config_node_gyp, npm_config_nodedir) when run by
// `npm install`; works without it too (`node scripts/build-addon.mjs`).
// Gives: native/original-dst/build/Release/original_dst.node. A machine that cannot build it
// loses only proxy mode, so every failure prints one line saying why and exits 0: the install
// goes on and the rest of Ichidan runs.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const addonDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'native', 'original-dst');

function unavailable(why) {
  console.log(`ichidan: transparent proxy mode will be unavailable: ${why}`);
  process.exit(0);
}

function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    process.env.npm_execpath && join(dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  return candidates.find((file) => file && existsSync(file));
}

function missingTool() {
  const tools = [['python3', '--version'], ['make', '--version'], ['cc', '--version']];
  const missing = tools.filter(([tool, flag]) => spawnSync(tool, [flag], { stdio: 'ignore' }).error).map(([tool]) => tool);
  return missing.length > 0 ? missing.join(', ') : null;
}

/** The compiler's or node-gyp's own words, so the one line says what went wrong. */
function firstError(output) {
  const lines = output.split('\n').map((line) => line.trim());
  return lines.find((line) => /\berror\b/i.test(line) && !line.startsWith('gyp ERR! stack')) ?? lines.filter(Boolean).at(-1) ?? 'no output';
}

if (process.platform !== 'linux') unavailable(`SO_ORIGINAL_DST exists only on Linux (this is ${process.platform})`);

const nodeGyp = findNodeGyp();
if (!nodeGyp) unavailable("npm's node-gyp was not found (run this script through npm, or set npm_config_node_gyp)");

const nodedir = process.env.npm_config_nodedir || dirname(dirname(process.execPath));
if (!existsSync(join(nodedir, 'include', 'node', 'node_api.h'))) {
  unavailable(`Node's headers are not in ${join(nodedir, 'include', 'node')} (install them, or point npm's nodedir at them)`);
}

const missing = missingTool();
if (missing) unavailable(`cannot compile the SO_ORIGINAL_DST addon: ${missing} missing (install python3, make and g++)`);

const build = spawnSync(process.execPath, [nodeGyp, 'rebuild', `--nodedir=${nodedir}`], { cwd: addonDir, encoding: 'utf8' });
if (build.error) unavailable(`node-gyp could not start: ${build.error.message}`);
if (build.status !== 0) {
  unavailable(`node-gyp failed to build native/original-dst: ${firstError(`${build.stdout}\n${build.stderr}`)} (whole output: cd native/original-dst && node ${nodeGyp} rebuild --nodedir=${nodedir})`);
}
console.log('ichidan: built native/original-dst (transparent proxy mode)');
