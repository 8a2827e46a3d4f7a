// The cluster dashboard in a real browser (issue 17): three chorusd nodes on
// loopback, Debian's Chromium driven headless through the DevTools protocol
// (puppeteer-core, installed by tools/check into $CHORUS_NPM_DIR). Through
// the page: sign in with an admin token, isolate a node, write on both sides
// with the CLI, see two groups of roots, heal (by keyboard), see agreement;
// then a phone-sized viewport. A screenshot of each state goes to
// $CHORUS_ARTIFACTS_DIR (paths printed).
//
// Exit 0 pass, 1 fail, 77 skipped: only when no browser can run here (no
// Chromium, no puppeteer-core, or Chromium does not start), and never when
// CHORUS_REQUIRE_BROWSER=1 (tools/check sets it once it installed both).
//
// Env: CHORUSD_BIN, CHORUS_BIN (the build's binaries), CHORUS_NPM_DIR,
// CHORUS_CHROMIUM (default: the first of chromium, chromium-browser,
// google-chrome on PATH), CHORUS_ARTIFACTS_DIR.
import {spawn, execFileSync} from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {createRequire} from 'node:module';

const SKIP = 77;
const requireBrowser = process.env.CHORUS_REQUIRE_BROWSER === '1';
const started = Date.now();
const elapsed = () => ((Date.now() - started) / 1000).toFixed(1);
const log = (...a) => console.log(`[${elapsed()} s]`, ...a);

function skip(why) {
  if (requireBrowser) {
    console.error(`dashboard test: FAILED: ${why} (CHORUS_REQUIRE_BROWSER=1: a browser must run here)`);
    process.exit(1);
  }
  console.log(`dashboard test: SKIPPED: ${why}`);
  process.exit(SKIP);
}

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`dashboard test: ${name} must name the built binary`);
    process.exit(1);
  }
  return v;
}

const chorusd = need('CHORUSD_BIN');
const chorus = need('CHORUS_BIN');

function findChromium() {
  if (process.env.CHORUS_CHROMIUM) return process.env.CHORUS_CHROMIUM;
  for (const dir of (process.env.PATH || '').split(':')) {
    for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
      const p = path.join(dir, name);
      try {
        fs.accessSync(p, fs.constants.X_OK);
        return p;
      } catch (_) { /* next */ }
    }
  }
  return null;
}

const chromium = findChromium();
if (!chromium) skip('no Chromium (Debian package `chromium`; tools/check installs it)');
const npmDir = process.env.CHORUS_NPM_DIR || path.join(os.homedir(), '.cache', 'chorus', 'npm');
let puppeteer;
try {
  puppeteer = createRequire(path.join(npmDir, 'package.json'))('puppeteer-core');
} catch (e) {
  skip(`no puppeteer-core in ${npmDir}/node_modules (tools/check installs it: tools/npm-packages)`);
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'chorus-dashboard-'));
const artifacts = process.env.CHORUS_ARTIFACTS_DIR || path.join(os.tmpdir(), 'chorus-dashboard-artifacts');
fs.mkdirSync(artifacts, {recursive: true});

// ---- processes ---------------------------------------------------------------

const daemons = [];  // {id, child, log}

// Runs the CLI; its stdout. Throws with its stderr on a non-zero exit.
function cli(args, timeoutMs = 20000) {
  try {
    return execFileSync(chorus, args, {timeout: timeoutMs, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']});
  } catch (e) {
    throw new Error(`chorus ${args.join(' ')}: exit ${e.status}: ${e.stderr || e.message}`);
  }
}

// Starts chorusd `id`; resolves with the addresses it printed.
function startNode(id, args) {
  const logPath = path.join(tmp, `${id}.log`);
  const out = fs.openSync(logPath, 'a');
  const child = spawn(chorusd, ['--node-id', id, '--data-dir', path.join(tmp, id), ...args],
                      {stdio: ['ignore', out, out]});
  fs.closeSync(out);
  const d = {id, child, logPath, exited: null};
  child.on('exit', (code, sig) => { d.exited = code ?? sig; });
  daemons.push(d);
  const deadline = Date.now() + 20000;
  return new Promise((resolve, reject) => {
    const check = () => {
      const text = fs.readFileSync(logPath, 'utf8');
      const rpc = /chorusd: listening on (\S+)\n/.exec(text);
      const gossip = /chorusd: gossip on (\S+)\n/.exec(text);
      const http = /chorusd: dashboard on http:\/\/([^\s/]+)\/\n/.exec(text);
      const wantHttp = args.includes('--http-listen');
      if (rpc && gossip && (!wantHttp || http)) {
        resolve({rpc: rpc[1], gossip: gossip[1], http: http && http[1]});
      } else if (d.exited !== null) {
        reject(new Error(`chorusd ${id} exited ${d.exited}:\n${text}`));
      } else if (Date.now() > deadline) {
        reject(new Error(`chorusd ${id} did not start in 20 s:\n${text}`));
      } else {
        setTimeout(check, 20);
      }
    };
    check();
  });
}

async function stopAll() {
  await Promise.all(daemons.map((d) => new Promise((resolve) => {
    if (d.exited !== null) return resolve();
    const kill = setTimeout(() => { try { process.kill(d.child.pid, 'SIGKILL'); } catch (_) { /* gone */ } }, 10000);
    d.child.once('exit', () => { clearTimeout(kill); resolve(); });
    try { process.kill(d.child.pid, 'SIGTERM'); } catch (_) { resolve(); }
  })));
}

function logs() {
  return daemons.map((d) => `----- ${d.id} (${d.logPath}) -----\n${fs.readFileSync(d.logPath, 'utf8').slice(-4000)}`).join('\n');
}

// ---- checks --------------------------------------------------------------------

let failures = 0, passes = 0;
function check(cond, what) {
  if (cond) {
    passes++;
  } else {
    failures++;
    console.error(`CHECK FAILED: ${what}`);
  }
  return cond;
}

// Waits (bounded) until `fn` in the page returns a truthy value; its value.
async function waitPage(page, what, fn, arg, timeoutMs = 20000) {
  try {
    const h = await page.waitForFunction(fn, {timeout: timeoutMs, polling: 100}, arg);
    return await h.jsonValue();
  } catch (e) {
    const status = await page.$eval('#convergence-status', (el) => el.textContent).catch(() => '?');
    const action = await page.$eval('#action-result', (el) => el.textContent).catch(() => '?');
    throw new Error(`the page did not show ${what} within ${timeoutMs / 1000} s (convergence panel: "${status}"; last action: "${action}"): ${e.message}`);
  }
}

const shots = [];
async function screenshot(page, name, what) {
  const file = path.join(artifacts, `dashboard-${name}.png`);
  await page.screenshot({path: file, fullPage: true});
  shots.push(`${file}: ${what}`);
}

// ---- the test ------------------------------------------------------------------

let browser;
try {
  // Tokens: an admin for the page, a writer for the CLI's writes.
  const tokens = path.join(tmp, 'tokens');
  const admin = JSON.parse(cli(['--json', 'token', 'create', '--principal', 'ops', '--roles', 'admin', '--tokens-file', tokens])).token;
  const writer = JSON.parse(cli(['--json', 'token', 'create', '--principal', 'alice', '--roles', 'writer', '--tokens-file', tokens])).token;
  const key = path.join(tmp, 'cluster.key');
  cli(['cluster', 'keys', 'generate', '--out', key]);
  const common = ['--listen', '127.0.0.1:0', '--gossip-listen', '127.0.0.1:0', '--cluster-key-file', key,
                  '--tokens-file', tokens, '--anti-entropy-interval', '200ms', '--unsafe-no-sync',
                  '--log-level', 'warn'];
  // n2 first, n3 joins it, n1 (the one serving the page) last, so that it
  // can be told every other node's RPC address while all ports are 0.
  const n2 = await startNode('n2', [...common, '--region', 'us-east']);
  const n3 = await startNode('n3', [...common, '--region', 'eu-west', '--join', n2.gossip]);
  const n1 = await startNode('n1', [...common, '--region', 'us-east', '--join', n2.gossip,
                                    '--http-listen', '127.0.0.1:0', '--overview-nodes', `${n2.rpc},${n3.rpc}`]);
  const origin = `http://${n1.http}`;
  log(`nodes up: n1 ${n1.rpc} (page ${origin}/), n2 ${n2.rpc}, n3 ${n3.rpc}`);

  try {
    browser = await puppeteer.launch({
      executablePath: chromium,
      headless: true,
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--no-first-run'],
      timeout: 20000,
    });
  } catch (e) {
    skip(`Chromium (${chromium}) does not start here: ${e.message.split('\n')[0]}`);
  }
  log(`browser: ${await browser.version()}`);
  const page = await browser.newPage();
  await page.setViewport({width: 1280, height: 800});
  const pageErrors = [];
  const offOrigin = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // The change feed's route may not exist on this node yet (the panel says so).
  page.on('console', (m) => {
    if (m.type() === 'error' && !/\/v1\/changes/.test(m.location()?.url || '')) pageErrors.push(`${m.text()} (${m.location()?.url})`);
  });
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) offOrigin.push(r.url()); });

  await page.goto(`${origin}/`, {waitUntil: 'load', timeout: 15000});
  // Sign in: the token form has the focus.
  await page.waitForSelector('#token-input', {visible: true, timeout: 10000});
  check(await page.evaluate(() => document.activeElement && document.activeElement.id === 'token-input'),
        'the token field has the focus at start');
  await page.keyboard.type(admin);
  await page.keyboard.press('Enter');
  await waitPage(page, 'agreement at start',
                 () => document.querySelector('#convergence-status')?.dataset.state === 'agree');
  check(await page.evaluate(() => document.querySelectorAll('#regions .tile').length) === 3, 'three tiles');
  const regions = await page.$$eval('#regions .region', (rs) => rs.map((r) =>
    `${r.querySelector('h3')?.textContent}: ${[...r.querySelectorAll('.tile')].map((t) => t.dataset.node).join(',')}`));
  check(JSON.stringify(regions) === JSON.stringify(['region eu-west: n3', 'region us-east: n1,n2']),
        `tiles grouped by region: ${JSON.stringify(regions)}`);
  check(await page.evaluate((t) => sessionStorage.getItem('chorus.adminToken') === t && localStorage.length === 0, admin),
        'the token is in session storage only');
  check((await page.$eval('#convergence-status', (el) => el.textContent)).includes('All 3 nodes agree'),
        'the panel says "All 3 nodes agree"');
  await screenshot(page, '1-agree', 'three nodes, one root: "All 3 nodes agree", no cut link');
  log('agreement shown');

  // Isolate n3 through its tile's button and the confirmation dialog.
  await page.click('#regions .tile[data-node="n3"] button[data-action="isolate"]');
  await page.waitForSelector('#confirm-dialog[open]', {timeout: 5000});
  check(await page.evaluate(() => document.activeElement?.closest('dialog')?.id === 'confirm-dialog'),
        'the confirmation dialog takes the focus');
  await page.click('#confirm-ok');
  await waitPage(page, 'n3 cut off',
                 () => document.querySelector('#cuts')?.dataset.cuts === '2' &&
                       document.querySelector('.tile[data-node="n3"] .drops')?.textContent.includes('n1'));
  log('n3 isolated');

  // Write on both sides with the CLI.
  cli(['--connect', n1.rpc, '--token', writer, 'review', 'put', 'p-left', 'alice', '-r', '5', '-t', 'written on n1']);
  cli(['--connect', n3.rpc, '--token', writer, 'review', 'put', 'p-right', 'alice', '-r', '2', '-t', 'written on n3']);
  const split = await waitPage(page, 'two groups of roots',
    () => {
      const s = document.querySelector('#convergence-status');
      if (s?.dataset.state !== 'differ' || s.dataset.groups !== '2') return null;
      return [...document.querySelectorAll('#groups li[data-root]')].map((li) => li.textContent);
    });
  check(split.length === 2 && split.some((g) => g.includes('n1, n2')) && split.some((g) => /n3/.test(g) && !/n1/.test(g)),
        `groups {n1, n2} and {n3}: ${JSON.stringify(split)}`);
  const roots = await page.$$eval('.tile', (ts) => Object.fromEntries(ts.map((t) => [t.dataset.node, t.dataset.root])));
  check(roots.n1 === roots.n2 && roots.n1 !== roots.n3, `n1 and n2 share a root, n3 has another: ${JSON.stringify(roots)}`);
  const colours = await page.$$eval('.tile', (ts) => Object.fromEntries(ts.map((t) => [t.dataset.node, t.style.borderLeftColor])));
  check(colours.n1 === colours.n2 && colours.n1 !== colours.n3, `equal roots share a colour: ${JSON.stringify(colours)}`);
  check(await page.$$eval('#topology-svg line.link.cut', (ls) => ls.length) === 2, 'two cut links drawn (n1-n3, n2-n3)');
  await screenshot(page, '2-partitioned', 'n3 isolated, one write on each side: two groups of roots ({n1, n2} and {n3}), links to n3 cut (dashed red)');
  log('two groups shown');

  // Heal by keyboard alone: focus the button, Enter, Tab to Confirm, Enter.
  await page.focus('#heal-button');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#confirm-dialog[open]', {timeout: 5000});
  check(await page.evaluate(() => document.activeElement?.value === 'cancel'), 'Cancel has the focus first');
  await page.keyboard.press('Tab');
  check(await page.evaluate(() => document.activeElement?.id === 'confirm-ok'), 'Tab reaches Confirm');
  await page.keyboard.press('Enter');
  const healStart = Date.now();
  await waitPage(page, 'agreement after heal',
                 () => document.querySelector('#convergence-status')?.dataset.state === 'agree' &&
                       document.querySelector('#cuts')?.dataset.cuts === '0', undefined, 30000);
  log(`agreement again ${((Date.now() - healStart) / 1000).toFixed(1)} s after heal`);
  check(await page.$$eval('.tile dl', (ds) => ds.every((d) => /Keys\s*2/.test(d.textContent))), 'every tile shows 2 keys');
  // Let the sparkline hold a few samples of both states.
  await screenshot(page, '3-healed', 'after heal from the page: "All 3 nodes agree" again, 2 keys each; the roots sparkline shows the 2 and back to 1');
  // Split dialog: keyboard-reachable radios, both groups needed.
  await page.click('#split-button');
  await page.waitForSelector('#split-dialog[open]', {timeout: 5000});
  check(await page.$$eval('#split-rows tr', (rs) => rs.length) === 3, 'the split dialog lists three nodes');
  await page.keyboard.press('Escape');
  check(await page.evaluate(() => !document.querySelector('#split-dialog').open), 'Escape closes the split dialog');

  // A phone-sized viewport: one column, nothing wider than the screen.
  await page.setViewport({width: 390, height: 844, isMobile: true, hasTouch: true});
  await page.reload({waitUntil: 'load'});
  await waitPage(page, 'agreement on a phone, with a few samples drawn',
                 () => document.querySelector('#convergence-status')?.dataset.state === 'agree' &&
                       document.querySelectorAll('#spark-writes polyline').length === 1);
  check(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1),
        'no horizontal scrolling at 390 px');
  await screenshot(page, '4-phone', '390x844: the same page in one column, signed in from session storage after a reload');

  check(pageErrors.length === 0, `no script errors in the page: ${JSON.stringify(pageErrors)}`);
  check(offOrigin.length === 0, `every request went to the node itself: ${JSON.stringify(offOrigin)}`);
} catch (e) {
  failures++;
  console.error(`dashboard test: ${e.stack || e.message}\n${logs()}`);
} finally {
  if (browser) await browser.close().catch(() => {});
  await stopAll();
}

for (const s of shots) console.log(`screenshot ${s}`);
if (failures === 0) fs.rmSync(tmp, {recursive: true, force: true});
else console.error(`kept ${tmp} (node logs, data dirs)`);
console.log(`dashboard test: ${elapsed()} s`);
console.log(`${passes} passed, ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
