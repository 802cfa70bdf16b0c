// Sluice admin dashboard: reads the authenticated `/events` Server-Sent-Events stream with
// fetch (EventSource cannot send the Authorization header) and renders it into the static
// markup of index.html. No framework, no innerHTML with data: every server string goes
// through textContent. Rows are kept in maps and updated in place, so a tick with 1,000
// sessions touches only the cells whose text changed.
// Entry point: window.sluiceDashboard.start(token) (the token form calls it too).
(function () {
  'use strict';

  const RETRY_MS = 2000;        // reconnect delay after the stream ends
  const SILENCE_MS = 10000;     // no bytes for this long (ticks are 1 s): treat as dead
  const CHART_POINTS = 600;     // 10 minutes of 1 s ticks
  const MAX_MESSAGES = 200;

  const $ = (id) => document.getElementById(id);
  let token = null;             // held in memory only: never storage, cookies or the URL
  let conn = 0;                 // connection generation: stale loops check it and stop
  let abort = null;
  let retryTimer = null;
  let prev = null;              // previous tick: counters for the per-second rates
  let lastTickMs = 0;           // render time of the last tick (for tests and tuning)
  const sessionRows = new Map();  // session id -> {tr, cells, bars, stagesKey}
  const stageRows = new Map();    // stage name -> {tr, cells}
  let stagesKey = '';

  // ---- small helpers ----
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function setText(e, text) {
    text = String(text);
    if (e.textContent !== text) e.textContent = text;
  }
  function num(v) { return typeof v === 'number' && isFinite(v) ? String(v) : '—'; }
  function ms(v) { return typeof v === 'number' ? (v < 10 ? v.toFixed(2) : v.toFixed(1)) : '—'; }
  function pad(n) { return String(n).padStart(2, '0'); }
  function duration(s) {
    if (typeof s !== 'number') return '—';
    if (s < 60) return s.toFixed(1) + ' s';
    const m = Math.floor(s / 60), h = Math.floor(m / 60);
    if (h === 0) return m + 'm ' + pad(Math.floor(s % 60)) + 's';
    return h + 'h ' + pad(m % 60) + 'm';
  }
  function uptime(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    return (d ? d + 'd ' : '') + h + ':' + pad(m) + ':' + pad(Math.floor(s % 60));
  }
  function clock(atMs) {
    const d = new Date(atMs);
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }
  // Nonzero entries of a counter object, e.g. "continue 100 · reject 2", or "—".
  function counts(obj) {
    const parts = [];
    for (const [k, v] of Object.entries(obj || {})) if (v) parts.push(k + ' ' + v);
    return parts.length ? parts.join(' · ') : '—';
  }
  function status(text, cls) {
    const s = $('conn-status');
    setText(s, text);
    s.className = 'status ' + cls;
  }

  // ---- connection ----
  function start(t) {
    token = String(t);
    $('token-error').hidden = true;
    $('token-form').hidden = true;
    $('dash').hidden = false;
    charts.create();
    connect();
  }

  function stop() {
    conn++;
    if (abort) abort.abort();
    clearTimeout(retryTimer);
  }

  function askToken(message) {
    stop();
    token = null;
    $('dash').hidden = true;
    $('token-form').hidden = false;
    const e = $('token-error');
    e.textContent = message;
    e.hidden = false;
    status('not connected', 'idle');
    $('token').value = '';
    $('token').focus();
  }

  function retry(why) {
    status('disconnected (' + why + '), retrying every 2 s', 'down');
    clearTimeout(retryTimer);
    const mine = conn;
    retryTimer = setTimeout(() => { if (mine === conn) connect(); }, RETRY_MS);
  }

  async function connect() {
    const mine = ++conn;
    if (abort) abort.abort();
    abort = new AbortController();
    const ctl = abort;
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => ctl.abort(), SILENCE_MS);
    };
    status('connecting…', 'idle');
    try {
      arm();
      const res = await fetch('/events', {
        headers: { Authorization: 'Bearer ' + token }, cache: 'no-store', signal: ctl.signal,
      });
      if (mine !== conn) return;
      if (res.status === 401) { clearTimeout(watchdog); askToken('wrong token'); return; }
      if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
      status('live', 'up');
      await readStream(res.body.getReader(), mine, arm);
      if (mine === conn) retry('stream ended');
    } catch (err) {
      if (mine === conn) retry(ctl.signal.aborted ? 'no data for 10 s' : String(err.message || err));
    } finally {
      clearTimeout(watchdog);
    }
  }

  // Minimal SSE framing: "event:" and "data:" lines, a blank line ends a frame,
  // lines starting with ":" are keep-alive comments.
  async function readStream(reader, mine, arm) {
    const decoder = new TextDecoder();
    let buf = '', event = 'message', data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (mine !== conn) { reader.cancel().catch(() => {}); return; }
      if (done) return;
      arm();
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (data.length) dispatch(event, data.join('\n'));
          event = 'message'; data = [];
        } else if (line[0] === ':') {
          // keep-alive
        } else {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val[0] === ' ') val = val.slice(1);
          if (field === 'event') event = val;
          else if (field === 'data') data.push(val);
        }
      }
    }
  }

  function dispatch(event, json) {
    let msg;
    try { msg = JSON.parse(json); } catch (e) { console.warn('bad event data', e); return; }
    if (event === 'hello') {
      messages.reset(msg.messages || []);
    } else if (event === 'tick') {
      const t0 = performance.now();
      renderTick(msg);
      lastTickMs = performance.now() - t0;
    }
  }

  // ---- tick rendering ----
  function renderTick(tick) {
    const st = tick.stats || {};
    renderHeader(st);
    renderSessions(tick.sessions || []);
    renderStages(tick.stages || [], tick.at_ms);
    renderFlow(st.flow || {}, tick.at_ms);
    if (tick.messages && tick.messages.length) messages.add(tick.messages);
    prev = { at_ms: tick.at_ms, flow: st.flow || {}, stages: tick.stages || [] };
  }

  function renderHeader(st) {
    setText($('uptime'), typeof st.uptime_seconds === 'number' ? uptime(st.uptime_seconds) : '—');
    setText($('generation'), num(st.chain_generation));
    const s = st.sessions || {}, tx = st.transactions || {}, b = st.bytes || {};
    setText($('sessions-current'), num(s.current));
    setText($('sessions-total'), num(s.total));
    for (const r of ['accepted', 'rejected', 'tempfailed', 'discarded', 'refused']) {
      setText($('tx-' + r), num(tx[r]));
    }
    setText($('bytes-in'), num(b.in));
    setText($('bytes-out'), num(b.out));
  }

  const SESSION_CELLS = ['id', 'peer', 'state', 'envelope', 'bytes num', 'age num', 'tls',
    'paused-by', 'queues'];

  function sessionRow(id) {
    const tr = el('tr');
    tr.dataset.session = id;
    const cells = {};
    for (const c of SESSION_CELLS) {
      const td = el('td', c);
      cells[c.split(' ')[0]] = td;
      tr.appendChild(td);
    }
    return { tr, cells, bars: new Map(), stagesKey: null, haystack: '' };
  }

  // One div bar per stage; rebuilt only when the session's list of stages changes.
  function renderQueues(row, s, largest) {
    const queued = s.queued || [];
    const show = s.paused || queued.some((q) => q.bytes > 0);
    const key = show ? queued.map((q) => q.stage).join('\n') : '';
    const td = row.cells.queues;
    if (key !== row.stagesKey) {
      td.textContent = '';
      row.bars.clear();
      if (show) {
        for (const q of queued) {
          const bar = el('div', 'q');
          const label = el('span', 'q-label');
          const track = el('div', 'q-track');
          const fill = el('div', 'q-fill');
          track.appendChild(fill);
          bar.append(label, track);
          td.appendChild(bar);
          row.bars.set(q.stage, { label, fill, width: '' });
        }
      }
      row.stagesKey = key;
    }
    if (!show) return;
    for (const q of queued) {
      const b = row.bars.get(q.stage);
      setText(b.label, q.stage + ' ' + q.bytes + ' B');
      const w = largest > 0 ? (100 * q.bytes / largest).toFixed(1) + '%' : '0%';
      if (b.width !== w) { b.fill.style.width = w; b.width = w; }
    }
  }

  function renderSessions(list) {
    const tbody = $('sessions').tBodies[0];
    let largest = 0;
    for (const s of list) for (const q of s.queued || []) if (q.bytes > largest) largest = q.bytes;
    const seen = new Set();
    const fresh = document.createDocumentFragment();
    for (const s of list) {
      seen.add(s.id);
      let row = sessionRows.get(s.id);
      if (!row) {
        row = sessionRow(s.id);
        sessionRows.set(s.id, row);
        fresh.appendChild(row.tr);
      }
      const c = row.cells, t = s.transaction;
      setText(c.id, s.id);
      setText(c.peer, s.peer);
      setText(c.state, s.state);
      setText(c.envelope, t ? (t.from || '<>') + ' → ' + t.rcpts + ' rcpt' + (t.rcpts === 1 ? '' : 's') : '—');
      setText(c.bytes, num(s.bytes_in));
      setText(c.age, duration(s.age_seconds));
      setText(c.tls, s.tls ? s.tls.version : '—');
      const cipher = s.tls ? s.tls.cipher || '' : '';
      if (c.tls.title !== cipher) c.tls.title = cipher;
      setText(c['paused-by'], s.paused ? 'paused by ' + (s.paused_by || '?') : '');
      row.tr.classList.toggle('paused', !!s.paused);
      renderQueues(row, s, largest);
      row.haystack = (s.id + ' ' + s.peer + ' ' + s.state).toLowerCase();
    }
    for (const [id, row] of sessionRows) {
      if (!seen.has(id)) { row.tr.remove(); sessionRows.delete(id); }
    }
    tbody.appendChild(fresh);
    filterSessions();
    setText($('sessions-count'), '(' + list.length + ')');
    $('sessions-empty').hidden = list.length > 0;
  }

  function filterSessions() {
    const needle = $('session-filter').value.trim().toLowerCase();
    for (const row of sessionRows.values()) {
      const hide = needle !== '' && !row.haystack.includes(needle);
      if (row.tr.hidden !== hide) row.tr.hidden = hide;
    }
  }

  const STAGE_CELLS = ['name', 'kind', 'gen num', 'rate num', 'p50 num', 'p99 num',
    'verdicts', 'failures', 'queued num'];

  function renderStages(stages, atMs) {
    // The chain changes only on reload: then rebuild the table once.
    const key = stages.map((s) => s.name).join('\n');
    if (key !== stagesKey) {
      const tbody = $('stages').tBodies[0];
      tbody.textContent = '';
      stageRows.clear();
      for (const s of stages) {
        const tr = el('tr');
        tr.dataset.stage = s.name;
        const cells = {};
        for (const c of STAGE_CELLS) { const td = el('td', c); cells[c.split(' ')[0]] = td; tr.appendChild(td); }
        stageRows.set(s.name, { tr, cells });
        tbody.appendChild(tr);
      }
      stagesKey = key;
    }
    const before = new Map((prev ? prev.stages : []).map((s) => [s.name, s]));
    const dt = prev ? (atMs - prev.at_ms) / 1000 : 0;
    for (const s of stages) {
      const c = stageRows.get(s.name).cells;
      const p = before.get(s.name);
      // A reload may reset a stage's counter: a negative difference shows as "—".
      const rate = p && dt > 0 && s.calls >= p.calls ? ((s.calls - p.calls) / dt).toFixed(1) : '—';
      setText(c.name, s.name);
      setText(c.kind, s.kind);
      setText(c.gen, num(s.generation));
      setText(c.rate, rate);
      setText(c.p50, ms(s.p50_ms));
      setText(c.p99, ms(s.p99_ms));
      setText(c.verdicts, counts(s.verdicts));
      setText(c.failures, counts(s.failures));
      setText(c.queued, num(s.queued_bytes));
    }
  }

  // ---- flow counters and charts ----
  function renderFlow(flow, atMs) {
    setText($('paused-now'), num(flow.paused_now));
    setText($('pauses-total'), num(flow.pauses));
    setText($('resumes-total'), num(flow.resumes));
    const p = prev && prev.flow, dt = prev ? (atMs - prev.at_ms) / 1000 : 0;
    const rate = (k) => (p && dt > 0 && flow[k] >= p[k] ? (flow[k] - p[k]) / dt : null);
    charts.push(atMs / 1000, rate('pauses'), rate('resumes'), flow.paused_now ?? null);
  }

  // Fixed-size ring buffer of CHART_POINTS samples per column, copied out in time order.
  function Ring(columns) {
    const cols = Array.from({ length: columns }, () => new Array(CHART_POINTS));
    let head = 0, size = 0;
    return {
      push(values) {
        values.forEach((v, i) => { cols[i][head] = v; });
        head = (head + 1) % CHART_POINTS;
        size = Math.min(size + 1, CHART_POINTS);
      },
      arrays() {
        const startAt = (head - size + CHART_POINTS) % CHART_POINTS;
        return cols.map((col) => {
          const out = new Array(size);
          for (let i = 0; i < size; i++) out[i] = col[(startAt + i) % CHART_POINTS];
          return out;
        });
      },
    };
  }

  const charts = (function () {
    const ring = Ring(4);  // x (s), pauses/s, resumes/s, paused now
    let rates = null, paused = null;
    // Always show the last 10 minutes, ending at the newest sample (or now, before any).
    const tenMinutes = (u, min, max) => {
      const end = max == null ? Date.now() / 1000 : max;
      return [end - CHART_POINTS, end];
    };
    function opts(title, series) {
      return {
        title, width: width(), height: 170,
        scales: { x: { time: true, range: tenMinutes }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
        series: [{}].concat(series),
        axes: [{}, { size: 45 }],
      };
    }
    // Two charts side by side (24 px gap in app.css), a little slack for rounding.
    function width() {
      const box = $('chart-rates').parentElement;
      return Math.max(300, Math.floor((box.clientWidth - 24) / 2) - 4);
    }
    return {
      create() {
        if (rates || typeof uPlot === 'undefined') return;
        rates = new uPlot(opts('pauses / resumes per second', [
          { label: 'pauses/s', stroke: '#c0392b', width: 1.5 },
          { label: 'resumes/s', stroke: '#2471a3', width: 1.5 },
        ]), [[], [], []], $('chart-rates'));
        paused = new uPlot(opts('sessions paused now', [
          { label: 'paused', stroke: '#7d3c98', fill: 'rgba(125,60,152,0.12)', width: 1.5,
            paths: uPlot.paths.stepped({ align: 1 }) },
        ]), [[], []], $('chart-paused'));
        // Follow the container (window resizes, a scrollbar appearing), not just the window.
        let last = 0;
        new ResizeObserver(() => {
          const w = width();
          if (w === last) return;
          last = w;
          rates.setSize({ width: w, height: 170 });
          paused.setSize({ width: w, height: 170 });
        }).observe($('chart-rates').parentElement);
      },
      push(x, pauses, resumes, now) {
        ring.push([x, pauses, resumes, now]);
        if (!rates) return;
        const [xs, ps, rs, ns] = ring.arrays();
        rates.setData([xs, ps, rs]);
        paused.setData([xs, ns]);
      },
    };
  })();

  // ---- messages: newest first, at most MAX_MESSAGES rows ----
  const messages = (function () {
    const tbody = () => $('messages').tBodies[0];
    function row(m) {
      const tr = el('tr', 'message result-' + String(m.result).replace(/[^a-z]/g, ''));
      const at = new Date(m.at_ms);
      const cells = [
        clock(m.at_ms), m.transaction, m.from || '<>', (m.rcpts || []).join(', '), m.result,
        m.stage || '—', m.reply, num(m.size), num(m.duration_ms),
      ];
      const classes = ['time', 'txn', 'from', 'rcpts', 'result', 'stage', 'reply', 'num', 'num'];
      cells.forEach((text, i) => tr.appendChild(el('td', classes[i], text)));
      tr.cells[0].title = isNaN(at) ? '' : at.toISOString();
      if (m.reason) tr.cells[5].title = m.reason;
      return tr;
    }
    function add(list) {  // list is oldest first
      const body = tbody();
      const needle = $('message-filter').value.trim().toLowerCase();
      const frag = document.createDocumentFragment();
      for (let i = list.length - 1; i >= Math.max(0, list.length - MAX_MESSAGES); i--) {
        const tr = row(list[i]);
        if (needle) tr.hidden = !tr.textContent.toLowerCase().includes(needle);
        frag.appendChild(tr);
      }
      body.insertBefore(frag, body.firstChild);
      while (body.rows.length > MAX_MESSAGES) body.deleteRow(-1);
      $('messages-empty').hidden = body.rows.length > 0;
    }
    return {
      add,
      reset(list) { tbody().textContent = ''; add(list); },
      filter() {
        const needle = $('message-filter').value.trim().toLowerCase();
        for (const tr of tbody().rows) tr.hidden = needle !== '' && !tr.textContent.toLowerCase().includes(needle);
      },
    };
  })();

  // ---- actions ----
  async function post(path) {
    const res = await fetch(path, { method: 'POST', headers: { Authorization: 'Bearer ' + token } });
    const text = await res.text();
    let body = null;
    try { body = JSON.parse(text); } catch (e) { /* not JSON: keep the text */ }
    return { ok: res.ok, status: res.status, body, text };
  }
  function failure(r) {
    return (r.body && r.body.error) || ('HTTP ' + r.status + (r.text ? ': ' + r.text : ''));
  }
  function show(e, text, isError) {
    e.textContent = text;
    e.classList.toggle('error', isError);
    e.classList.toggle('ok', !isError);
  }

  async function reload() {
    const btn = $('reload'), out = $('reload-result');
    btn.disabled = true;
    show(out, 'reloading…', false);
    try {
      const r = await post('/reload');
      if (r.ok) show(out, 'reloaded: generation ' + (r.body ? r.body.generation : '?'), false);
      else show(out, failure(r), true);
    } catch (err) {
      show(out, 'reload failed: ' + (err.message || err), true);
    } finally {
      btn.disabled = false;
    }
  }

  async function trace(box) {
    const sub = box.dataset.subsystem, want = box.checked, out = $('trace-result');
    box.disabled = true;
    try {
      const r = await post('/trace/' + encodeURIComponent(sub) + '/' + (want ? 'on' : 'off'));
      if (r.ok && r.body) {
        box.checked = !!r.body.enabled;
        show(out, r.body.subsystem + ' ' + (r.body.enabled ? 'on' : 'off') + ' (filter: ' + r.body.filter + ')', false);
      } else {
        box.checked = !want;
        show(out, sub + ': ' + failure(r), true);
      }
    } catch (err) {
      box.checked = !want;
      show(out, sub + ': ' + (err.message || err), true);
    } finally {
      box.disabled = false;
    }
  }

  function wire() {
    const connect = () => {
      const t = $('token').value;
      $('token').value = '';
      if (t) start(t);
    };
    $('token-submit').addEventListener('click', connect);
    $('token').addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') connect();
    });
    $('session-filter').addEventListener('input', filterSessions);
    $('message-filter').addEventListener('input', messages.filter);
    $('reload').addEventListener('click', reload);
    for (const box of document.querySelectorAll('#trace input[data-subsystem]')) {
      box.addEventListener('change', () => trace(box));
    }
  }

  window.sluiceDashboard = {
    start,
    stop,
    get lastTickMs() { return lastTickMs; },
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', wire);
  else wire();
})();
