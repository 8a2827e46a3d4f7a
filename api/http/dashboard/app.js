// Chorus cluster dashboard: polls GET /v1/cluster/overview (every node's
// view, fetched by the serving node) about once a second and draws it; the
// controls call POST /v1/cluster/overview/partition and .../heal; recent
// changes come from GET /v1/changes?feed=eventsource.
// No build step, no dependency: this file is served as it is.
'use strict';

const POLL_MS = 1000;
const REQUEST_TIMEOUT_MS = 8000;
const SERIES_SECONDS = 300;  // the sparklines' span
const MAX_CHANGES = 30;
const TOKEN_KEY = 'chorus.adminToken';
// Fill colours for Merkle roots, in the order roots appear (largest group
// first), so equal roots share a colour. Text on each is black or white,
// whichever contrasts more.
const ROOT_COLOURS = ['#2563eb', '#ea580c', '#16a34a', '#9333ea', '#db2777', '#ca8a04',
                      '#0891b2', '#78350f', '#4b5563', '#84cc16'];

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  overview: null,
  series: [],         // {t, roots, writesPerSec}
  lastWrites: null,   // {t, byNode: Map(nodeId -> {writes, uptime})}
  pollTimer: null,
  polling: false,
  lastOk: 0,
  rootColour: new Map(),
  feed: null,         // AbortController of the change stream
  feedSeq: null,
  changes: [],
};

// ---- small helpers ---------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    // Through the CSSOM: the node's Content-Security-Policy refuses style attributes.
    else if (k === 'style') Object.assign(e.style, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function shortRoot(hex) { return hex ? hex.slice(0, 8) : '-'; }

function ago(ms) {
  if (ms === null || ms === undefined) return 'never';
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(1)} s ago`;
  if (s < 120) return `${Math.round(s)} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function joinIds(ids) { return ids.join(', '); }

function textColourFor(hex) {
  const n = parseInt(hex.slice(1), 16);
  const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  const l = 0.2126 * lin((n >> 16) & 255) + 0.7152 * lin((n >> 8) & 255) + 0.0722 * lin(n & 255);
  return (l + 0.05) / 0.05 > 1.05 / (l + 0.05) ? '#000000' : '#ffffff';
}

// A root's colour: stable while the root is shown, assigned in group order.
function colourOf(root) {
  return state.rootColour.get(root) || '#9ca3af';
}

function assignColours(groups) {
  const next = new Map();
  const used = new Set();
  // Keep colours of roots still shown, so a tile does not change colour
  // just because another group grew.
  for (const g of groups) {
    const c = state.rootColour.get(g.merkleRoot);
    if (c && !used.has(c)) { next.set(g.merkleRoot, c); used.add(c); }
  }
  for (const g of groups) {
    if (next.has(g.merkleRoot)) continue;
    const free = ROOT_COLOURS.find((c) => !used.has(c)) || ROOT_COLOURS[next.size % ROOT_COLOURS.length];
    next.set(g.merkleRoot, free);
    used.add(free);
  }
  state.rootColour = next;
}

function rootChip(root) {
  const bg = colourOf(root);
  return el('span', {class: 'root', style: {background: bg, color: textColourFor(bg)},
                     title: root, 'data-root': root}, shortRoot(root));
}

function setLive(kind, text) {
  $('live').dataset.state = kind;
  $('live-text').textContent = text;
}

// ---- HTTP ------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), REQUEST_TIMEOUT_MS);
  const headers = {Accept: 'application/json'};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  try {
    const res = await fetch(path, {method, headers, cache: 'no-store', signal: ctl.signal,
                                   body: body === undefined ? undefined : JSON.stringify(body)});
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
    if (!res.ok) {
      const message = (json && (json.message || json.detail || json.title)) || text || res.statusText;
      throw new HttpError(res.status, json && json.code, message);
    }
    return json;
  } catch (e) {
    if (e instanceof HttpError) throw e;
    throw new HttpError(0, 'unavailable', e.name === 'AbortError' ? 'the node did not answer in time'
                                                                   : 'the node is not reachable');
  } finally {
    clearTimeout(timer);
  }
}

// ---- token -----------------------------------------------------------------

function showTokenForm(message) {
  stopPolling();
  $('board').hidden = true;
  $('change-token').hidden = true;
  $('token-panel').hidden = false;
  $('token-error').textContent = message || '';
  setLive('error', message ? 'signed out' : 'not connected');
  $('token-input').focus();
}

function startWithToken(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token-panel').hidden = true;
  $('board').hidden = false;
  $('change-token').hidden = false;
  startPolling();
  startFeed();
}

$('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const token = $('token-input').value.trim();
  $('token-input').value = '';
  startWithToken(token);
});

$('change-token').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  stopFeed();
  showTokenForm('');
});

// ---- polling ---------------------------------------------------------------

function stopPolling() {
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
  state.polling = false;
}

function startPolling() {
  stopPolling();
  state.polling = true;
  poll();
}

async function poll() {
  if (!state.polling) return;
  const started = Date.now();
  try {
    const overview = await api('GET', '/v1/cluster/overview');
    if (!state.polling) return;
    state.lastOk = Date.now();
    render(overview);
    setLive('live', `live · updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      stopFeed();
      showTokenForm(`${e.status === 401 ? 'The node did not accept this token' : 'This token may not do that'}: ${e.message}`);
      return;
    }
    const staleFor = state.lastOk ? Math.round((Date.now() - state.lastOk) / 1000) : null;
    setLive(staleFor === null ? 'error' : 'stale',
            `${e.message}${staleFor === null ? '' : ` · data ${staleFor} s old`}`);
    if (!state.overview) {
      const v = $('convergence-status');
      v.dataset.state = 'error';
      v.textContent = `No answer from this node: ${e.message}`;
    }
  }
  if (state.polling) {
    state.pollTimer = setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
  }
}

// ---- rendering -------------------------------------------------------------

// The nodes that take part: not left, and known as members (a listed
// address that did not answer and that no member advertises is "unknown").
function members(overview) {
  return overview.nodes.filter((n) => n.state !== 'left' && n.state !== 'unknown');
}

function render(overview) {
  state.overview = overview;
  assignColours(overview.groups);
  $('served-by').textContent = `served by ${overview.servedBy}`;
  if ($('changes-source').textContent) $('changes-source').textContent = `from ${overview.servedBy}`;
  recordSeries(overview);
  renderConvergence(overview);
  renderTopology(overview);
  renderNodes(overview);
}

function recordSeries(overview) {
  const t = Date.now();
  const byNode = new Map();
  for (const n of overview.nodes) {
    if (n.reachable) byNode.set(n.nodeId, {writes: n.writes, uptime: n.uptimeMillis});
  }
  let writesPerSec = null;
  const prev = state.lastWrites;
  if (prev && t > prev.t) {
    let sum = 0;
    for (const [id, now] of byNode) {
      const before = prev.byNode.get(id);
      if (!before) continue;
      // A restarted node counts from zero again.
      sum += now.uptime < before.uptime || now.writes < before.writes ? now.writes : now.writes - before.writes;
    }
    writesPerSec = sum / ((t - prev.t) / 1000);
  }
  state.lastWrites = {t, byNode};
  state.series.push({t, roots: overview.groups.length, writesPerSec});
  while (state.series.length && state.series[0].t < t - SERIES_SECONDS * 1000) state.series.shift();
  const first = state.series[0].t;
  drawSpark($('spark-roots'), state.series.map((s) => [s.t, s.roots]), t, 3, first);
  drawSpark($('spark-writes'), state.series.filter((s) => s.writesPerSec !== null).map((s) => [s.t, s.writesPerSec]), t, 10, first);
  const plural = (n, unit) => `${n} ${unit}${n === 1 ? '' : 's'}`;
  $('series-span').textContent = t - first < 60000 ? plural(Math.round((t - first) / 1000), 'second')
                                                   : plural(Math.round(Math.min(t - first, SERIES_SECONDS * 1000) / 60000), 'minute');
  $('roots-now').textContent = `now ${overview.groups.length}`;
  const last = state.series[state.series.length - 1];
  $('writes-now').textContent = last.writesPerSec === null ? '' : `now ${last.writesPerSec.toFixed(1)}`;
}

// Draws `points` ([time, value]) over the span since the first sample (at
// least 30 s, at most SERIES_SECONDS), ending now.
function drawSpark(svgEl, points, now, minMax, first) {
  svgEl.replaceChildren();
  const W = 300, H = 60, pad = 4;
  const span = Math.min(SERIES_SECONDS * 1000, Math.max(30000, now - first));
  const max = Math.max(minMax, ...points.map((p) => p[1]));
  const x = (t) => W - ((now - t) / span) * W;
  const y = (v) => H - pad - (v / max) * (H - 2 * pad);
  svgEl.append(svg('line', {class: 'base', x1: 0, x2: W, y1: y(0), y2: y(0)}));
  const label = svgEl.dataset.label || (svgEl.dataset.label = svgEl.getAttribute('aria-label'));
  if (points.length === 0) return;
  const coords = points.map((p) => [x(p[0]), y(p[1])]);
  if (coords.length === 1) coords.unshift([coords[0][0] - 2, coords[0][1]]);
  const text = coords.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(' ');
  svgEl.append(svg('polygon', {class: 'area',
                               points: `${coords[0][0].toFixed(1)},${y(0)} ${text} ${coords[coords.length - 1][0].toFixed(1)},${y(0)}`}));
  svgEl.append(svg('polyline', {points: text}));
  svgEl.setAttribute('aria-label', `${label}: now ${points[points.length - 1][1].toFixed(1)}, at most ${max.toFixed(1)}`);
}

function renderConvergence(overview) {
  const v = $('convergence-status');
  const all = members(overview);
  const groups = overview.groups;
  const out = [];
  if (overview.agree) {
    v.dataset.state = 'agree';
    v.textContent = `All ${all.length} nodes agree`;
  } else if (groups.length > 1) {
    v.dataset.state = 'differ';
    v.textContent = `${groups.length} groups of roots differ`;
  } else {
    v.dataset.state = 'differ';
    const missing = overview.unreachable.length + overview.notAsked.length;
    v.textContent = groups.length === 1
      ? `${groups[0].nodes.length} of ${all.length} nodes agree; ${missing} did not answer`
      : 'No node answered';
  }
  v.dataset.groups = String(groups.length);
  for (const g of groups) {
    out.push(el('li', {'data-root': g.merkleRoot}, rootChip(g.merkleRoot),
                el('span', {}, `${joinIds(g.nodes)}`),
                el('span', {class: 'hint'}, `${g.keys} ${g.keys === 1 ? 'key' : 'keys'}`)));
  }
  if (overview.unreachable.length) {
    out.push(el('li', {}, el('span', {class: 'badge unreachable'}, 'unreachable'), joinIds(overview.unreachable)));
  }
  if (overview.notAsked.length) {
    out.push(el('li', {}, el('span', {class: 'badge not-asked'}, 'not asked'),
                `${joinIds(overview.notAsked)} (list their RPC addresses in chorusd --overview-nodes to see their data)`));
  }
  $('groups').replaceChildren(...out);
}

// Which pairs are cut: a node drops another if its own answer lists it.
function cutBetween(a, b) {
  const drops = (x, y) => x.reachable && x.partitioned.includes(y.nodeId);
  if (drops(a, b) || drops(b, a)) return 'cut';
  if (!a.reachable && !b.reachable) return 'unknown';
  if (!a.reachable || !b.reachable) {
    // Only one side answered: it does not drop the other, but the other may.
    return 'unknown';
  }
  return 'ok';
}

function renderTopology(overview) {
  const s = $('topology-svg');
  const desc = s.querySelector('desc');
  s.replaceChildren(desc);
  // Around the ring by region, so a region's nodes sit together.
  const nodes = members(overview).slice().sort((a, b) =>
    (a.region || '').localeCompare(b.region || '') || a.nodeId.localeCompare(b.nodeId));
  // Room around the ring for each node's id and root (drawn outside it).
  const W = 420, H = 300, cx = W / 2, cy = H / 2;
  const r = nodes.length <= 1 ? 0 : Math.min(W / 2 - 95, H / 2 - 54);
  const pos = new Map();
  nodes.forEach((n, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / nodes.length;
    pos.set(n.nodeId, [cx + r * Math.cos(a), cy + r * Math.sin(a)]);
  });
  const cuts = [];
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      const [a, b] = [nodes[i], nodes[j]];
      const kind = cutBetween(a, b);
      const [x1, y1] = pos.get(a.nodeId), [x2, y2] = pos.get(b.nodeId);
      const line = svg('line', {class: `link ${kind}`, x1, y1, x2, y2, 'data-a': a.nodeId, 'data-b': b.nodeId});
      line.append(svg('title', {}, `${a.nodeId} – ${b.nodeId}: ${kind === 'cut' ? 'cut' : kind === 'ok' ? 'talking' : 'unknown'}`));
      s.append(line);
      if (kind === 'cut') {
        cuts.push(`${a.nodeId} ✕ ${b.nodeId}`);
        s.append(svg('text', {class: 'cut-mark', x: (x1 + x2) / 2 - 5, y: (y1 + y2) / 2 + 5}, '✕'));
      }
    }
  }
  for (const n of nodes) {
    const [x, y] = pos.get(n.nodeId);
    const fill = n.reachable ? colourOf(n.merkleRoot) : '#e5e7eb';
    const g = svg('g', {class: `node${n.reachable ? '' : ' down'}`, 'data-node': n.nodeId});
    g.append(svg('circle', {cx: x, cy: y, r: 20, fill}));
    // Labels outside the ring, away from the links.
    const dx = x - cx, dy = y - cy, len = Math.hypot(dx, dy) || 1;
    const ux = r ? dx / len : 0, uy = r ? dy / len : 1;
    const anchor = Math.abs(ux) < 0.3 ? 'middle' : ux > 0 ? 'start' : 'end';
    const lx = x + ux * 26, ly = y + uy * 26 + (uy < -0.3 ? -14 : uy > 0.3 ? 10 : -3);
    g.append(svg('text', {x: lx, y: ly, 'text-anchor': anchor}, n.nodeId));
    g.append(svg('text', {class: 'state', x: lx, y: ly + 14, 'text-anchor': anchor},
                 n.reachable ? shortRoot(n.merkleRoot) : (n.asked ? 'unreachable' : 'not asked')));
    g.append(svg('title', {}, `${n.nodeId}: ${n.state}${n.reachable ? `, root ${shortRoot(n.merkleRoot)}` : ''}`));
    s.append(g);
  }
  const drops = nodes.filter((n) => n.reachable && n.partitioned.length)
    .map((n) => `${n.nodeId} drops ${joinIds(n.partitioned)}`);
  $('cuts').textContent = drops.length ? `Partitions: ${drops.join('; ')}` : 'No partition in place.';
  $('cuts').dataset.cuts = String(cuts.length);
}

function renderNodes(overview) {
  const byRegion = new Map();
  for (const n of overview.nodes) {
    const r = n.region || '';
    if (!byRegion.has(r)) byRegion.set(r, []);
    byRegion.get(r).push(n);
  }
  const regions = [...byRegion.keys()].sort();
  const showRegions = regions.length > 1 || (regions[0] && regions[0] !== 'default');
  const out = [];
  for (const r of regions) {
    const tiles = el('div', {class: 'tiles'}, ...byRegion.get(r).map(tile));
    out.push(el('section', {class: 'region', 'aria-label': r ? `region ${r}` : 'nodes'},
                showRegions ? el('h3', {}, r ? `region ${r}` : 'region unknown') : null, tiles));
  }
  $('regions').replaceChildren(...out);
}

function tile(n) {
  const badgeClass = !n.reachable ? (n.asked ? 'unreachable' : 'not-asked') : n.state;
  const badges = [el('span', {class: `badge ${n.state}`}, n.state)];
  if (!n.reachable) badges.push(el('span', {class: `badge ${badgeClass}`}, n.asked ? 'unreachable' : 'not asked'));
  if (n.self) badges.push(el('span', {class: 'badge self'}, 'serving'));
  const rows = [];
  const row = (k, v) => rows.push(el('dt', {}, k), el('dd', {}, v));
  if (n.reachable) {
    row('Root', rootChip(n.merkleRoot));
    row('Keys', String(n.keys));
    row('Last sync', ago(n.lastSyncMillisAgo));
    row('Pending deltas', String(n.pendingDeltas));
    row('Refused stamps', String(n.refusedStamps));
    row('Auth failures', String(n.authFailures));
  } else if (n.seenBy) {
    row('Last sync', `${ago(n.seenBy.lastSyncMillisAgo)} (with ${state.overview.servedBy})`);
    row('Pending deltas', `${n.seenBy.pendingDeltas} (at ${state.overview.servedBy})`);
  }
  const parts = [el('header', {}, el('h4', {}, n.nodeId), ...badges),
                 rows.length ? el('dl', {}, ...rows) : null];
  if (n.reachable && n.partitioned.length) {
    parts.push(el('p', {class: 'drops'}, `drops ${joinIds(n.partitioned)}`));
  }
  if (!n.reachable && n.error) parts.push(el('p', {class: 'why'}, n.error.message));
  if (n.state !== 'left' && n.state !== 'unknown') {
    parts.push(el('button', {type: 'button', class: 'small', 'data-action': 'isolate', 'data-node': n.nodeId,
                             onclick: () => confirmIsolate(n.nodeId)}, `Isolate ${n.nodeId}…`));
  }
  const border = n.reachable ? colourOf(n.merkleRoot) : '#9ca3af';
  return el('article', {class: 'tile', style: {borderLeftColor: border}, 'data-node': n.nodeId,
                        'data-root': n.reachable ? n.merkleRoot : '', 'data-state': n.state,
                        'aria-label': `node ${n.nodeId}`}, ...parts);
}

// ---- controls --------------------------------------------------------------

function ask(title, text, okLabel) {
  const d = $('confirm-dialog');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = okLabel;
  d.returnValue = '';
  d.showModal();
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), {once: true});
  });
}

function actionResult(kind, text) {
  const r = $('action-result');
  r.dataset.state = kind;
  r.textContent = text;
}

async function runPartition(groups) {
  actionResult('pending', `Partitioning ${groups.map((g) => joinIds(g)).join(' | ')}…`);
  try {
    await api('POST', '/v1/cluster/overview/partition', {a: groups[0], b: groups[1]});
    actionResult('ok', `Partitioned: ${groups.map((g) => `{${joinIds(g)}}`).join(' and ')} drop each other.`);
  } catch (e) {
    actionResult('error', `Partition failed: ${e.message}`);
  }
  poll0();
}

async function confirmIsolate(id) {
  const others = members(state.overview).map((n) => n.nodeId).filter((x) => x !== id);
  if (!others.length) {
    actionResult('error', `${id} is the only node: nothing to isolate it from.`);
    return;
  }
  const ok = await ask(`Isolate ${id}?`,
                       `${id} will drop gossip with ${joinIds(others)}, and they with it. Any earlier partition is replaced. ` +
                       'Both sides keep taking writes and diverge until you heal.', `Isolate ${id}`);
  if (ok) await runPartition([[id], others]);
}

function openSplit() {
  const nodes = members(state.overview || {nodes: []});
  const rows = nodes.map((n, i) => {
    const name = `side-${n.nodeId}`;
    const radio = (value, checked) => el('td', {}, el('input', {type: 'radio', name, value, checked,
      'aria-label': `${n.nodeId}: ${value === 'a' ? 'group A' : value === 'b' ? 'group B' : 'neither'}`,
      onchange: updateSplit}));
    return el('tr', {'data-node': n.nodeId}, el('th', {scope: 'row'}, n.nodeId),
              radio('a', i < Math.ceil(nodes.length / 2)), radio('b', i >= Math.ceil(nodes.length / 2)), radio('none', false));
  });
  $('split-rows').replaceChildren(...rows);
  updateSplit();
  const d = $('split-dialog');
  d.returnValue = '';
  d.showModal();
}

function splitGroups() {
  const a = [], b = [];
  for (const tr of $('split-rows').querySelectorAll('tr')) {
    const v = tr.querySelector('input:checked')?.value;
    if (v === 'a') a.push(tr.dataset.node);
    if (v === 'b') b.push(tr.dataset.node);
  }
  return [a, b];
}

function updateSplit() {
  const [a, b] = splitGroups();
  const ok = a.length > 0 && b.length > 0;
  $('split-ok').disabled = !ok;
  $('split-summary').textContent = ok ? `Group A {${joinIds(a)}} and group B {${joinIds(b)}} will drop each other.`
                                      : 'Put at least one node in each group.';
}

$('split-button').addEventListener('click', openSplit);
$('split-dialog').addEventListener('close', () => {
  if ($('split-dialog').returnValue !== 'ok') return;
  const [a, b] = splitGroups();
  if (a.length && b.length) runPartition([a, b]);
});

$('heal-button').addEventListener('click', async () => {
  const ok = await ask('Heal every partition?', 'Every node stops dropping gossip; the groups exchange what they missed and converge.',
                       'Heal all');
  if (!ok) return;
  actionResult('pending', 'Healing…');
  try {
    const r = await api('POST', '/v1/cluster/overview/heal', {});
    const notAsked = r && r.notAsked && r.notAsked.length ? ` Not asked: ${joinIds(r.notAsked)}.` : '';
    actionResult('ok', `Healed ${joinIds(r ? r.healed : [])}.${notAsked}`);
  } catch (e) {
    actionResult('error', `Heal failed: ${e.message}`);
  }
  poll0();
});

// Polls at once (after an action), keeping the one-second rhythm after it.
function poll0() {
  if (!state.polling) return;
  clearTimeout(state.pollTimer);
  poll();
}

// ---- change feed -----------------------------------------------------------

function stopFeed() {
  if (state.feed) state.feed.abort();
  state.feed = null;
}

function feedStatus(text) { $('changes-status').textContent = text; }

function addChange(c) {
  // A FeedChange of GET /v1/changes: {seq, product, author, deleted, review?}.
  const op = c.deleted ? 'delete' : 'change';
  state.changes.unshift({seq: c.seq, time: new Date(), op, key: `${c.product}/${c.author}`});
  state.changes.length = Math.min(state.changes.length, MAX_CHANGES);
  $('changes-list').replaceChildren(...state.changes.map((x) => el('li', {},
    el('span', {class: 'seq'}, `#${x.seq}`), el('span', {class: 'time'}, x.time.toLocaleTimeString()),
    el('span', {class: 'op'}, x.op), el('span', {class: 'key'}, x.key))));
}

// The feed as server-sent events, read through fetch (EventSource cannot
// send an Authorization header). Resumes from the last seq it saw.
async function startFeed() {
  stopFeed();
  const ctl = new AbortController();
  state.feed = ctl;
  const since = state.feedSeq === null ? 'now' : String(state.feedSeq);
  const headers = {Accept: 'text/event-stream'};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let retry = 3000;
  try {
    const res = await fetch(`/v1/changes?feed=eventsource&since=${since}&heartbeat=15000`,
                            {headers, cache: 'no-store', signal: ctl.signal});
    if (res.status === 404 || res.status === 405) {
      feedStatus('This node does not serve the change feed (GET /v1/changes).');
      return;
    }
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
    $('changes-source').textContent = `from ${state.overview ? state.overview.servedBy : 'this node'}`;
    feedStatus(state.changes.length ? '' : 'Waiting for changes…');
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += value;
      let end;
      while ((end = buf.search(/\r?\n\r?\n/)) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(buf.slice(end).match(/^\r?\n\r?\n/)[0].length + end);
        // `start` (data {lastSeq, replicaId}), `change` (a FeedChange, id
        // its seq), `end` (a problem: the token stopped being valid).
        let data = '', event = 'message';
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith('data:')) data += line.slice(5).trimStart();
          if (line.startsWith('event:')) event = line.slice(6).trim();
          if (line.startsWith('retry:')) retry = Number(line.slice(6)) || retry;
        }
        if (!data) continue;
        let c;
        try { c = JSON.parse(data); } catch (_) { continue; }
        if (event === 'change') {
          state.feedSeq = c.seq;
          feedStatus('');
          addChange(c);
        } else if (event === 'start') {
          state.feedSeq = c.lastSeq;
        } else if (event === 'end') {
          feedStatus(`Change feed ended: ${c.message || c.detail || 'refused'}`);
          state.feed = null;
          return;
        }
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
    feedStatus(`Change feed interrupted (${e.message}); reconnecting…`);
  }
  if (state.feed === ctl) setTimeout(() => { if (state.feed === ctl) startFeed(); }, retry);
}

// ---- start -----------------------------------------------------------------

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved !== null) startWithToken(saved); else showTokenForm('');
