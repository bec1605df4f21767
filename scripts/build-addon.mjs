// Builds the native addons with the node-gyp that ships with npm, against the Node headers already
// on the machine: npm's nodedir when set, else the prefix the running node was installed under, so
// nothing is downloaded.
//   native/original-dst  SO_ORIGINAL_DST, for the transparent proxy (mta/proxy/proxy-origdst.ts)
//   native/sd-notify     systemd's readiness notifications (mta/mta-notify.ts)
//   native/reuseport     an accept queue of their own for known senders (mta/ingress/ingress-known-queue.ts)
//
// Takes: npm's lifecycle environment (npm_config_node_gyp, npm_config_nodedir) when run by
// `npm install`; works without it too (`node scripts/build-addon.mjs`).
// Gives: native/<addon>/build/Release/<addon>.node. A machine that cannot build an addon loses
// only what it is for (proxy mode; readiness is then sent through the systemd-notify program; known
// senders share the accept queue with everyone), so every failure prints one line saying why and
// exits 0: the install goes on and the rest of Ichidan runs.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const nativeDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'native');

const ADDONS = [
  { dir: 'original-dst', built: 'transparent proxy mode', lost: 'transparent proxy mode will be unavailable' },
  { dir: 'sd-notify', built: "systemd's readiness notifications", lost: 'systemd readiness will be sent through the systemd-notify program' },
  { dir: 'reuseport', built: "known senders' own accept queue", lost: "known senders will share the listeners' accept queue with everyone" },
];

function unavailable(why) {
  for (const addon of ADDONS) console.log(`ichidan: ${addon.lost}: ${why}`);
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

if (process.platform !== 'linux') unavailable(`the addons are for Linux only (this is ${process.platform})`);

const nodeGyp = findNodeGyp();
if (!nodeGyp) unavailable("npm's node-gyp was not found (run this script through npm, or set npm_config_node_gyp)");

const nodedir = process.env.npm_config_nodedir || dirname(dirname(process.execPath));
if (!existsSync(join(nodedir, 'include', 'node', 'node_api.h'))) {
  unavailable(`Node's headers are not in ${join(nodedir, 'include', 'node')} (install them, or point npm's nodedir at them)`);
}

const missing = missingTool();
if (missing) unavailable(`cannot compile the native addons: ${missing} missing (install python3, make and g++)`);

for (const addon of ADDONS) {
  const build = spawnSync(process.execPath, [nodeGyp, 'rebuild', `--nodedir=${nodedir}`], { cwd: join(nativeDir, addon.dir), encoding: 'utf8' });
  if (build.error) console.log(`ichidan: ${addon.lost}: node-gyp could not start: ${build.error.message}`);
  else if (build.status !== 0) {
    console.log(`ichidan: ${addon.lost}: node-gyp failed to build native/${addon.dir}: ${firstError(`${build.stdout}\n${build.stderr}`)} (whole output: cd native/${addon.dir} && node ${nodeGyp} rebuild --nodedir=${nodedir})`);
  } else console.log(`ichidan: built native/${addon.dir} (${addon.built})`);
}
