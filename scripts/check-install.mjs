// Checks the two ways Ichidan is installed without its dev dependencies, for real, from npm's
// cache where it can (--prefer-offline: after .ci/run's full `npm ci` the cache holds every
// tarball, though not always every package's metadata, which installing a tarball asks for):
//   pack   `npm pack` (prepack builds dist/ and locks the dependencies in npm-shrinkwrap.json),
//          then `npm install --omit=dev` of the tarball into an empty folder, as a dependency (npm
//          hoists smtp-server beside it);
//   clone  `git clone` of this checkout's HEAD, then `npm ci --omit=dev` in it (dist/ is built at
//          install from the sources, with TypeScript from the dependencies).
// Each install must have applied patches/ to the smtp-server it runs, built the native addons, run `ichidan --version` and
// `check-config`, and start once on a loopback port: the greeting answers, SIGTERM stops it.
// Run by .ci/run (too slow for the test suite: each install compiles); `node scripts/check-install.mjs [pack|clone]`.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const PATCH_MARK = "ichidan: the wait before the greeting is the listener's greetingDelay";
const work = mkdtempSync(join(tmpdir(), 'ichidan-install-'));
const npmEnv = { ...process.env, npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false' };

function fail(message) {
  console.error(`check-install: FAILED: ${message}`);
  process.exit(1);
}

function run(what, command, args, cwd) {
  const started = Date.now();
  const result = spawnSync(command, args, { cwd, env: npmEnv, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (result.status !== 0) fail(`${what} (exit ${result.status}${result.error ? `, ${result.error.message}` : ''})\n${result.stdout}\n${result.stderr}`);
  console.log(`check-install: ${what}: ok (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  return result.stdout;
}

/** Reads the 220 greeting of host:port. */
function greeting(port) {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.setEncoding('utf8');
    socket.once('data', (line) => { socket.end('QUIT\r\n'); resolve(line); });
    socket.once('error', reject);
    setTimeout(() => { socket.destroy(); reject(new Error('no greeting within 10 s')); }, 10_000).unref();
  });
}

/** Starts `ichidan start` once with a config on port 0 and a data folder in `dir`, reads the greeting, stops it. */
async function startOnce(what, main, dir) {
  const config = join(dir, 'ichidan.yaml');
  writeFileSync(config, 'hostname: mx.example.test\ndataDir: data\nlisteners:\n  - { name: mx, role: mx, address: 127.0.0.1, port: 0 }\n');
  const version = run(`${what}: ichidan --version`, process.execPath, [main, '--version'], dir).trim();
  const expected = JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')).version;
  if (version !== expected) fail(`${what}: ichidan --version printed "${version}", not ${expected}`);
  run(`${what}: ichidan check-config`, process.execPath, [main, 'check-config', config], dir);
  const child = spawn(process.execPath, [main, 'start', '-c', config], { cwd: dir, env: { ...process.env, ICHIDAN_READY_FD: '3' }, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const ready = await new Promise((resolve, reject) => {
    let text = '';
    child.stdio[3].on('data', (d) => { text += d; if (text.includes('\n')) resolve(JSON.parse(text.split('\n')[0])); });
    exited.then((code) => reject(new Error(`ichidan exited (${code}) before it was ready: ${stderr}`)));
    setTimeout(() => reject(new Error('not ready within 60 s')), 60_000).unref();
  }).catch((err) => { child.kill('SIGKILL'); fail(`${what}: start: ${err.message}`); });
  const line = await greeting(ready.listeners[0].port).catch((err) => fail(`${what}: greeting: ${err.message}`));
  if (!line.startsWith('220 ')) fail(`${what}: greeting: ${line}`);
  child.kill('SIGTERM');
  const code = await exited;
  if (code !== 0) fail(`${what}: stop: exit ${code}: ${stderr}`);
  if (!existsSync(join(dir, 'data', 'queue.db'))) fail(`${what}: no queue database in the config file's data folder`);
  console.log(`check-install: ${what}: started, greeted (${line.trim()}), stopped`);
}

/** Both native addons built at install from the C sources the package ships (python3, make and g++ are in .ci/run). */
function checkAddons(what, pkg) {
  for (const addon of ['original-dst/build/Release/original_dst.node', 'sd-notify/build/Release/sd_notify.node']) {
    if (!existsSync(join(pkg, 'native', addon))) fail(`${what}: native/${addon} was not built at install`);
  }
  console.log(`check-install: ${what}: native addons built`);
}

function checkPatched(what, smtpServer) {
  const file = join(smtpServer, 'dist', 'cjs', 'smtp-connection.js');
  if (!readFileSync(file, 'utf8').includes(PATCH_MARK)) fail(`${what}: ${file} is not patched (patches/ was not applied)`);
  console.log(`check-install: ${what}: patches/ applied to ${smtpServer}`);
}

async function checkPack() {
  const out = run('npm pack', 'npm', ['pack', '--pack-destination', work, '--silent'], repo);
  const tarball = join(work, out.trim().split('\n').at(-1));
  const app = join(work, 'app');
  mkdirSync(app);
  run('pack: npm install --omit=dev --prefer-offline', 'npm', ['install', '--omit=dev', '--prefer-offline', tarball], app);
  const pkg = join(app, 'node_modules', 'ichidan');
  if (existsSync(join(pkg, 'mta', 'mta-main.ts'))) fail('pack: the package holds the TypeScript sources; it should hold dist/ only');
  if (existsSync(join(app, 'node_modules', 'vitest'))) fail('pack: a dev dependency (vitest) was installed');
  checkPatched('pack', join(app, 'node_modules', 'smtp-server'));
  checkAddons('pack', pkg);
  await startOnce('pack', join(pkg, 'dist', 'mta', 'mta-main.js'), mkdtempSync(join(work, 'run-')));
}

async function checkClone() {
  const clone = join(work, 'clone');
  run('git clone', 'git', ['clone', '--quiet', '--no-hardlinks', repo, clone], work);
  run('clone: npm ci --omit=dev --prefer-offline', 'npm', ['ci', '--omit=dev', '--prefer-offline'], clone);
  if (existsSync(join(clone, 'node_modules', 'vitest'))) fail('clone: a dev dependency (vitest) was installed');
  if (!existsSync(join(clone, 'dist', 'mta', 'mta-main.js'))) fail('clone: dist/ was not built at install');
  checkPatched('clone', join(clone, 'node_modules', 'smtp-server'));
  checkAddons('clone', clone);
  await startOnce('clone', join(clone, 'dist', 'mta', 'mta-main.js'), mkdtempSync(join(work, 'run-')));
}

const which = process.argv[2] ?? 'both';
if (!['pack', 'clone', 'both'].includes(which)) fail(`usage: node scripts/check-install.mjs [pack|clone|both] (not ${which})`);
if (which !== 'clone') await checkPack();
if (which !== 'pack') await checkClone();
rmSync(work, { recursive: true, force: true });
console.log('check-install: ok');
