// flashgrab marketing console. Plain JavaScript, no build step, no library:
// it is compiled into the binary and served at /console under a
// Content-Security-Policy of default-src 'self' (no inline script, no eval).
//
// The admin token is kept in sessionStorage only (gone with the tab) and
// sent as `Authorization: Bearer` on every API call; it never goes into a
// URL or a cookie. Everything shown comes from the API with that token;
// the page itself holds no data. Text from the API is always set with
// textContent, never as HTML.
'use strict';

(function () {
  const TOKEN = 'flashgrab.adminToken';
  const PAGE = 20;
  const main = () => document.getElementById('main');
  let stopLive = null; // aborts the live stream of the page being left

  // ---- small helpers -------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function token() { return sessionStorage.getItem(TOKEN); }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || ('HTTP ' + status));
      this.status = status;
      this.body = body || {};
    }
  }

  async function api(method, path, body, extraHeaders) {
    const headers = Object.assign({ Authorization: 'Bearer ' + token() }, extraHeaders || {});
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    let json = null;
    try { json = await resp.json(); } catch (_) { json = null; }
    if (resp.status === 401) {
      sessionStorage.removeItem(TOKEN);
      route();
      throw new ApiError(401, json);
    }
    if (!resp.ok) throw new ApiError(resp.status, json);
    return json;
  }

  const fmtInt = (n) => (n === null || n === undefined ? '-' : Number(n).toLocaleString());
  const money = (cents) => (cents / 100).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });

  function local(iso) {
    if (!iso) return '-';
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  }

  // A time in the browser's zone with its UTC form under it.
  function both(iso) {
    return el('span', {}, local(iso), el('br'), el('span', { class: 'utc', text: iso ? iso + ' UTC' : '' }));
  }

  function badge(status) {
    return el('span', { class: 'badge ' + status, 'data-status': status, text: status.replace('_', ' ') });
  }

  function bar(part, whole) {
    const fill = el('span');
    fill.style.width = (whole > 0 ? Math.min(100, (100 * part) / whole) : 0).toFixed(1) + '%';
    return el('div', { class: 'bar', title: fmtInt(part) + ' of ' + fmtInt(whole) }, fill);
  }

  function notice(text, bad) {
    return el('div', { class: 'notice' + (bad ? ' bad' : ''), role: 'alert', text });
  }

  // datetime-local value (browser zone) <-> RFC 3339 UTC.
  function localInputToUtc(v) {
    if (!v) return '';
    const d = new Date(v);
    return isNaN(d.getTime()) ? v : d.toISOString().replace('.000Z', 'Z');
  }
  function utcToLocalInput(iso) {
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, '0');
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + 'T' + pad(d.getHours()) + ':' +
      pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }

  // ---- Server-Sent Events over fetch (EventSource cannot send a header) -----

  function subscribe(path, onEvent, onState) {
    const ctl = new AbortController();
    (async () => {
      while (!ctl.signal.aborted) {
        try {
          const resp = await fetch(path, { headers: { Authorization: 'Bearer ' + token(), Accept: 'text/event-stream' }, signal: ctl.signal, cache: 'no-store' });
          if (resp.status === 401) { sessionStorage.removeItem(TOKEN); route(); return; }
          if (!resp.ok) throw new Error('HTTP ' + resp.status);
          onState && onState('connected');
          const reader = resp.body.getReader();
          const dec = new TextDecoder();
          let buf = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += dec.decode(value, { stream: true });
            let i;
            while ((i = buf.indexOf('\n\n')) >= 0) {
              const block = buf.slice(0, i);
              buf = buf.slice(i + 2);
              let name = 'message'; const data = [];
              for (const line of block.split('\n')) {
                if (line.startsWith('event:')) name = line.slice(6).trim();
                else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
              }
              if (data.length) onEvent(name, JSON.parse(data.join('\n')));
            }
          }
        } catch (e) {
          if (ctl.signal.aborted) return;
          onState && onState('reconnecting');
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    return () => ctl.abort();
  }

  // ---- pages ---------------------------------------------------------------

  function signIn(message) {
    document.getElementById('nav').hidden = true;
    const input = el('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', required: true });
    const err = el('div', { class: 'error', id: 'sign-in-error', text: message || '' });
    const form = el('form', { id: 'sign-in', class: 'card', onsubmit: async (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN, input.value.trim());
      try {
        const resp = await fetch('/v1/campaigns?limit=1', { headers: { Authorization: 'Bearer ' + token() } });
        if (resp.status === 401) { sessionStorage.removeItem(TOKEN); err.textContent = 'That token was refused.'; return; }
        if (!resp.ok) { err.textContent = 'The service answered ' + resp.status + '; try again.'; return; }
        if (!location.hash || location.hash === '#/' || location.hash === '#/sign-in') location.hash = '#/drops';
        else route();
      } catch (e) { err.textContent = 'Cannot reach the service.'; }
    } },
    el('h1', { text: 'Sign in' }),
    el('p', { class: 'hint', text: 'Paste the admin token (FLASHGRAB_ADMIN_TOKEN). It is kept in this tab only.' }),
    el('div', { class: 'row' }, el('label', { for: 'token', text: 'Admin token' }), input),
    err,
    el('button', { type: 'submit', id: 'sign-in-submit', text: 'Sign in' }));
    main().replaceChildren(form);
    input.focus();
  }

  async function dropsPage(cursor, history) {
    const wrap = el('div', { id: 'drops' }, el('h1', { text: 'Drops' }));
    main().replaceChildren(wrap);
    const q = '/v1/campaigns?limit=' + PAGE + (cursor ? '&cursor=' + encodeURIComponent(cursor) : '');
    let page;
    try { page = await api('GET', q); } catch (e) { wrap.append(notice(e.message, true)); return; }
    if (!page.campaigns.length) {
      wrap.append(el('p', {}, 'No drops yet. ', el('a', { href: '#/new', text: 'Create one' }), '.'));
    }
    const body = el('tbody');
    const table = el('table', { id: 'drops-table' },
      el('thead', {}, el('tr', {}, ['Drop', 'Status', 'Sold', 'Starts', 'Ends'].map((h) => el('th', { text: h })))), body);
    for (const c of page.campaigns) {
      const sold = el('td', { class: 'sold' }, el('span', { class: 'small', text: '...' }));
      body.append(el('tr', { 'data-id': c.id },
        el('td', {}, el('a', { href: '#/drop/' + c.id, class: 'drop-link', text: c.name }), el('br'), el('span', { class: 'small', text: c.id })),
        el('td', {}, badge(c.status)), sold, el('td', {}, both(c.starts_at)), el('td', {}, both(c.closed_at || c.ends_at))));
      api('GET', '/v1/campaigns/' + c.id + '/stats').then((s) => {
        sold.replaceChildren(bar(s.claimed, s.total_stock), el('span', { class: 'small', text: fmtInt(s.claimed) + ' / ' + fmtInt(s.total_stock) }));
      }).catch(() => sold.replaceChildren(el('span', { class: 'small', text: 'n/a' })));
    }
    if (page.campaigns.length) wrap.append(table);
    const pager = el('div', { class: 'actions' });
    if (history.length) pager.append(el('button', { type: 'button', class: 'secondary', id: 'prev-page', text: 'Newer', onclick: () => dropsPage(history[history.length - 1], history.slice(0, -1)) }));
    if (page.next_cursor) pager.append(el('button', { type: 'button', class: 'secondary', id: 'next-page', text: 'Older', onclick: () => dropsPage(page.next_cursor, history.concat([cursor])) }));
    wrap.append(pager);
  }

  // One labelled input row; `field` is the API's name for it (400 `field`).
  function row(label, field, input, hint) {
    const err = el('div', { class: 'error', 'data-error-for': field });
    const r = el('div', { class: 'row', 'data-field': field },
      el('label', { for: input.id, text: label }), el('div', {}, input, hint ? el('div', { class: 'hint', text: hint }) : null, err));
    return r;
  }

  function showFieldError(form, field, message) {
    form.querySelectorAll('.invalid').forEach((r) => r.classList.remove('invalid'));
    form.querySelectorAll('[data-error-for]').forEach((e) => { e.textContent = ''; });
    if (!field) return false;
    // The most specific row whose field is the error's field or a prefix of it.
    let target = null;
    form.querySelectorAll('[data-field]').forEach((r) => {
      const f = r.getAttribute('data-field');
      if ((field === f || field.startsWith(f + '.')) && (!target || f.length > target.getAttribute('data-field').length)) target = r;
    });
    if (!target) return false;
    target.classList.add('invalid');
    target.querySelector('[data-error-for]').textContent = message;
    const input = target.querySelector('input, select');
    if (input) input.focus();
    return true;
  }

  function utcHint(input) {
    const h = el('div', { class: 'hint utc-hint' });
    const update = () => { h.textContent = input.value ? '= ' + localInputToUtc(input.value) + ' (UTC)' : 'your local time; sent as UTC'; };
    input.addEventListener('input', update);
    update();
    return h;
  }

  function newDropPage() {
    const idem = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).slice(0, 64);
    const inp = (id, type, extra) => el('input', Object.assign({ id, name: id, type }, extra || {}));
    const now = new Date(Date.now() + 60_000);
    const later = new Date(Date.now() + 2 * 3600_000);
    const f = {
      name: inp('f-name', 'text', { maxlength: 200, placeholder: 'Double 11 - 20 off 100' }),
      total: inp('f-total', 'number', { min: 1, step: 1, value: 1000 }),
      limit: inp('f-limit', 'number', { min: 1, max: 100, step: 1, value: 1 }),
      starts: inp('f-starts', 'datetime-local', { step: 1, value: utcToLocalInput(now.toISOString()) }),
      ends: inp('f-ends', 'datetime-local', { step: 1, value: utcToLocalInput(later.toISOString()) }),
      shards: inp('f-shards', 'number', { min: 1, max: 1024, step: 1, placeholder: 'automatic' }),
      type: el('select', { id: 'f-type', name: 'f-type' }, el('option', { value: 'fixed', text: 'fixed amount' }), el('option', { value: 'percent', text: 'percent' })),
      amount: inp('f-amount', 'number', { min: 0.01, step: 0.01, value: 5 }),
      percent: inp('f-percent', 'number', { min: 1, max: 100, step: 1, value: 10 }),
      cap: inp('f-cap', 'number', { min: 0.01, step: 0.01, placeholder: 'no cap' }),
      minSpend: inp('f-min-spend', 'number', { min: 0, step: 0.01, value: 0 }),
      products: inp('f-products', 'text', { placeholder: 'p1, p2 (empty: any)' }),
      categories: inp('f-categories', 'text', { placeholder: 'shoes, bags (empty: any)' }),
      validity: el('select', { id: 'f-validity', name: 'f-validity' }, el('option', { value: 'days', text: 'days from the claim' }), el('option', { value: 'until', text: 'until a date' })),
      days: inp('f-days', 'number', { min: 1, max: 3650, step: 1, value: 7 }),
      until: inp('f-until', 'datetime-local', { step: 1 }),
      from: inp('f-from', 'datetime-local', { step: 1 }),
    };
    const fixedRows = [row('Amount off', 'coupon.discount.amount_cents', f.amount, 'in currency units, e.g. 5.00')];
    const percentRows = [
      row('Percent off', 'coupon.discount.percent', f.percent, '1..100'),
      row('Cap', 'coupon.discount.max_cents', f.cap, 'largest discount, optional'),
    ];
    const daysRow = row('Valid for days', 'coupon.valid_for_days', f.days, '1..3650, counted from the claim');
    const untilRow = row('Valid until', 'coupon.valid_until', f.until);
    untilRow.querySelector('div').append(utcHint(f.until));
    const sync = () => {
      fixedRows.forEach((r) => { r.hidden = f.type.value !== 'fixed'; });
      percentRows.forEach((r) => { r.hidden = f.type.value !== 'percent'; });
      daysRow.hidden = f.validity.value !== 'days';
      untilRow.hidden = f.validity.value !== 'until';
    };
    f.type.addEventListener('change', sync);
    f.validity.addEventListener('change', sync);
    const status = el('div', { id: 'form-status' });
    const submit = el('button', { type: 'submit', id: 'create-submit', text: 'Create drop' });
    const cents = (v) => Math.round(Number(v) * 100);
    const ids = (v) => v.split(',').map((s) => s.trim()).filter(Boolean);
    const form = el('form', { id: 'new-drop', class: 'card', novalidate: true, onsubmit: async (ev) => {
      ev.preventDefault();
      status.replaceChildren();
      showFieldError(form, null);
      const coupon = { discount: f.type.value === 'fixed'
        ? { type: 'fixed', amount_cents: cents(f.amount.value) }
        : Object.assign({ type: 'percent', percent: Number(f.percent.value) }, f.cap.value ? { max_cents: cents(f.cap.value) } : {}) };
      coupon.min_spend_cents = cents(f.minSpend.value || 0);
      const p = ids(f.products.value); const c = ids(f.categories.value);
      if (p.length || c.length) coupon.applies_to = { product_ids: p, category_ids: c };
      if (f.validity.value === 'days') coupon.valid_for_days = Number(f.days.value);
      else coupon.valid_until = localInputToUtc(f.until.value);
      if (f.from.value) coupon.valid_from = localInputToUtc(f.from.value);
      const body = {
        name: f.name.value, total_stock: Number(f.total.value), per_user_limit: Number(f.limit.value),
        starts_at: localInputToUtc(f.starts.value), ends_at: localInputToUtc(f.ends.value), coupon,
      };
      if (f.shards.value) body.shards = Number(f.shards.value);
      submit.disabled = true;
      try {
        const created = await api('POST', '/v1/campaigns', body, { 'Idempotency-Key': idem });
        location.hash = '#/drop/' + created.id;
      } catch (e) {
        if (e.status === 400 && showFieldError(form, e.body.field, e.body.message)) {
          status.append(notice('Please fix the field marked below.', true));
        } else {
          status.append(notice(e.message + (e.body.error ? ' (' + e.body.error + ')' : ''), true));
        }
      } finally { submit.disabled = false; }
    } },
    el('h1', { text: 'New drop' }),
    status,
    row('Name', 'name', f.name, 'shown to marketing only; 1..200 characters'),
    row('Total stock', 'total_stock', f.total, '1..1,000,000,000 coupons'),
    row('Per-user limit', 'per_user_limit', f.limit, 'coupons one user may hold, 1..100'),
    (() => { const r = row('Starts', 'starts_at', f.starts); r.querySelector('div').append(utcHint(f.starts)); return r; })(),
    (() => { const r = row('Ends', 'ends_at', f.ends); r.querySelector('div').append(utcHint(f.ends)); return r; })(),
    row('Shards', 'shards', f.shards, 'optional; the service picks from the cluster size and stock'),
    el('h2', { text: 'Coupon' }),
    row('Discount', 'coupon.discount.type', f.type),
    fixedRows, percentRows,
    row('Minimum spend', 'coupon.min_spend_cents', f.minSpend, 'in currency units; 0 = none'),
    row('Products', 'coupon.applies_to.product_ids', f.products, 'comma separated ids'),
    row('Categories', 'coupon.applies_to.category_ids', f.categories, 'comma separated ids'),
    row('Validity', 'coupon.validity', f.validity),
    daysRow, untilRow,
    (() => { const r = row('Valid from', 'coupon.valid_from', f.from, 'optional; default: the moment of the claim'); r.querySelector('div').append(utcHint(f.from)); return r; })(),
    el('div', { class: 'actions' }, submit));
    sync();
    main().replaceChildren(form);
  }

  // Rates from successive frames: per-second deltas over a sliding window.
  function lineChart(canvas, series) {
    const ctx = canvas.getContext('2d');
    const w = canvas.width = canvas.clientWidth * devicePixelRatio;
    const h = canvas.height = canvas.clientHeight * devicePixelRatio;
    ctx.clearRect(0, 0, w, h);
    const all = series.flatMap((s) => s.points.map((p) => p[1]));
    const max = Math.max(1, ...all);
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    if (!xs.length) return;
    const x0 = Math.min(...xs); const x1 = Math.max(x0 + 1, ...xs);
    const pad = 28 * devicePixelRatio;
    ctx.font = (11 * devicePixelRatio) + 'px system-ui';
    ctx.fillStyle = '#6b7280';
    ctx.fillText(fmtInt(Math.round(max)), 4, pad - 6);
    ctx.strokeStyle = '#e5e7eb';
    ctx.beginPath(); ctx.moveTo(pad, h - pad); ctx.lineTo(w - 4, h - pad); ctx.stroke();
    for (const s of series) {
      ctx.strokeStyle = s.color; ctx.lineWidth = 2 * devicePixelRatio;
      ctx.beginPath();
      s.points.forEach(([x, y], i) => {
        const px = pad + ((x - x0) / (x1 - x0)) * (w - pad - 4);
        const py = h - pad - (y / max) * (h - 2 * pad);
        if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py);
      });
      ctx.stroke();
    }
  }

  function barChart(canvas, points, color) {
    const ctx = canvas.getContext('2d');
    const w = canvas.width = canvas.clientWidth * devicePixelRatio;
    const h = canvas.height = canvas.clientHeight * devicePixelRatio;
    ctx.clearRect(0, 0, w, h);
    if (!points.length) return;
    const max = Math.max(1, ...points.map((p) => p[1]));
    const pad = 28 * devicePixelRatio;
    const bw = (w - pad - 4) / points.length;
    ctx.fillStyle = color;
    points.forEach(([, y], i) => {
      const bh = (y / max) * (h - 2 * pad);
      ctx.fillRect(pad + i * bw + 1, h - pad - bh, Math.max(1, bw - 2), bh);
    });
    ctx.fillStyle = '#6b7280';
    ctx.font = (11 * devicePixelRatio) + 'px system-ui';
    ctx.fillText(fmtInt(max), 4, pad - 6);
    ctx.fillText(points[0][0], pad, h - 8);
    const last = points[points.length - 1][0];
    ctx.fillText(last, w - ctx.measureText(last).width - 4, h - 8);
  }

  function figure(id, label) {
    const v = el('div', { class: 'v', id, text: '-' });
    return { node: el('div', { class: 'figure' }, v, el('div', { class: 'k', text: label })), set: (t) => { v.textContent = t; } };
  }

  async function dropPage(id) {
    const wrap = el('div', { id: 'drop' });
    main().replaceChildren(wrap);
    let c;
    try { c = await api('GET', '/v1/campaigns/' + id); } catch (e) { wrap.append(notice(e.message, true)); return; }
    const title = el('h1', { id: 'drop-name', text: c.name });
    const statusSlot = el('span', { id: 'drop-status' }, badge(c.status));
    const conn = el('span', { class: 'small', id: 'live-state', text: 'connecting...' });
    const figs = {
      remaining: figure('fig-remaining', 'remaining'), claimed: figure('fig-claimed', 'claimed'),
      persisted: figure('fig-persisted', 'persisted'), lag: figure('fig-lag', 'not yet persisted'),
      grants: figure('fig-grants', 'grants / s'), claims: figure('fig-claims', 'claims / s (this instance)'),
      sellout: figure('fig-sellout', 'time to sell out'), redeemed: figure('fig-redeemed', 'redeemed'),
    };
    const canvas = el('canvas', { id: 'rate-chart' });
    const shards = el('div', { class: 'shards', id: 'shard-bars' });
    const info = el('div', { class: 'card small' },
      el('div', {}, 'Starts ', both(c.starts_at)), el('div', {}, 'Ends ', el('span', { id: 'drop-ends' }, both(c.closed_at || c.ends_at))),
      el('div', { text: 'Coupon: ' + JSON.stringify(c.coupon) }));
    const msg = el('div', { id: 'drop-message' });
    const closeBtn = el('button', { type: 'button', id: 'close-drop', class: 'secondary', text: 'Close now', onclick: async () => {
      if (!window.confirm('Close "' + c.name + '" now? Claims stop at once; this cannot be undone.')) return;
      try { c = await api('POST', '/v1/campaigns/' + id + '/close'); msg.replaceChildren(notice('Closed.')); statusSlot.replaceChildren(badge(c.status)); }
      catch (e) { msg.replaceChildren(notice(e.message, true)); }
    } });
    const editBtn = el('button', { type: 'button', id: 'edit-drop', class: 'secondary', text: 'Edit', onclick: () => { editForm.hidden = !editForm.hidden; } });
    const editForm = editFormFor(c, (updated) => {
      c = updated; title.textContent = c.name;
      wrap.querySelector('#drop-ends').replaceChildren(both(c.ends_at));
      msg.replaceChildren(notice('Saved.'));
      editForm.hidden = true;
    });
    editForm.hidden = true;
    wrap.append(title, el('p', {}, statusSlot, ' ', conn, ' ', el('a', { href: '#/report/' + id, id: 'report-link', text: 'Report and export' })),
      msg, el('div', { class: 'actions' }, closeBtn, editBtn), editForm,
      el('div', { class: 'figures' }, Object.values(figs).map((f) => f.node)),
      el('h2', { text: 'Grants and claims per second, last 5 minutes' }),
      el('div', { class: 'legend' }, el('span', { class: 'a', text: '- grants/s ' }), el('span', { class: 'b', text: '- claims/s (this instance)' })),
      canvas, el('h2', { text: 'Stock per shard' }), shards, info);

    const history = []; // [t, claimed, attempts]
    let soldOutAt = null;
    stopLive = subscribe('/v1/campaigns/' + id + '/live', (name, s) => {
      if (name !== 'stats') return;
      const t = Date.parse(s.at) / 1000;
      history.push([t, s.claimed, s.attempts_here]);
      while (history.length && history[0][0] < t - 300) history.shift();
      statusSlot.replaceChildren(badge(s.status));
      figs.remaining.set(fmtInt(s.remaining)); figs.claimed.set(fmtInt(s.claimed));
      figs.persisted.set(fmtInt(s.persisted)); figs.lag.set(fmtInt(Math.max(0, s.claimed - s.persisted)));
      figs.redeemed.set(fmtInt(s.redeemed));
      const rates = [];
      for (let i = 1; i < history.length; i++) {
        const dt = history[i][0] - history[i - 1][0] || 1;
        rates.push([history[i][0], (history[i][1] - history[i - 1][1]) / dt, (history[i][2] - history[i - 1][2]) / dt]);
      }
      const last = rates[rates.length - 1];
      figs.grants.set(last ? fmtInt(Math.round(last[1])) : '-');
      figs.claims.set(last ? fmtInt(Math.round(last[2])) : '-');
      if (s.remaining === 0 && s.claimed > 0) {
        if (soldOutAt === null) {
          api('GET', '/v1/campaigns/' + id + '/report').then((r) => {
            if (r.sold_out_after_ms !== null) { soldOutAt = r.sold_out_after_ms; figs.sellout.set((soldOutAt / 1000).toFixed(1) + ' s'); }
          }).catch(() => {});
          soldOutAt = -1;
        }
      } else if (last && last[1] > 0) {
        figs.sellout.set('~' + Math.ceil(s.remaining / last[1]) + ' s left');
      } else if (s.status !== 'ended') figs.sellout.set('-');
      lineChart(canvas, [
        { color: '#d9480f', points: rates.map((r) => [r[0], r[1]]) },
        { color: '#1864ab', points: rates.map((r) => [r[0], r[2]]) },
      ]);
      const initial = s.total_stock / Math.max(1, s.shards.length);
      shards.replaceChildren(...s.shards.flatMap((sh) => [
        el('span', { class: 'small', text: 'shard ' + sh.shard }), bar(sh.remaining, Math.max(initial, sh.remaining)),
        el('span', { class: 'small', text: fmtInt(sh.remaining) + ' left' })]));
    }, (state) => { conn.textContent = state === 'connected' ? 'live' : 'reconnecting...'; });
  }

  function editFormFor(c, done) {
    const name = el('input', { id: 'e-name', type: 'text', value: c.name, maxlength: 200 });
    const ends = el('input', { id: 'e-ends', type: 'datetime-local', step: 1, value: utcToLocalInput(c.ends_at) });
    const total = el('input', { id: 'e-total', type: 'number', min: c.total_stock, step: 1, value: c.total_stock });
    const status = el('div');
    const form = el('form', { id: 'edit-form', class: 'card', novalidate: true, onsubmit: async (ev) => {
      ev.preventDefault();
      status.replaceChildren(); showFieldError(form, null);
      const body = {};
      if (name.value !== c.name) body.name = name.value;
      const e = localInputToUtc(ends.value);
      if (e && Date.parse(e) !== Date.parse(c.ends_at)) body.ends_at = e;
      if (Number(total.value) !== c.total_stock) body.total_stock = Number(total.value);
      if (!Object.keys(body).length) { status.append(notice('Nothing changed.')); return; }
      try { done(await api('PATCH', '/v1/campaigns/' + c.id, body)); }
      catch (err) {
        if (err.status === 400 && showFieldError(form, err.body.field, err.body.message)) return;
        const field = { ends_at_earlier: 'ends_at', ends_at_out_of_range: 'ends_at', below_claimed: 'total_stock', stock_decrease: 'total_stock' }[err.body.reason];
        if (!(field && showFieldError(form, field, err.message))) status.append(notice(err.message, true));
      }
    } },
    el('h2', { text: 'Edit' }), status,
    row('Name', 'name', name),
    (() => { const r = row('Ends', 'ends_at', ends, 'only later'); r.querySelector('div').append(utcHint(ends)); return r; })(),
    row('Total stock', 'total_stock', total, 'only more: a top-up spread over the shards'),
    el('div', { class: 'actions' }, el('button', { type: 'submit', id: 'edit-submit', text: 'Save' })));
    return form;
  }

  async function reportPage(id) {
    const wrap = el('div', { id: 'report' });
    main().replaceChildren(wrap);
    let r;
    try { r = await api('GET', '/v1/campaigns/' + id + '/report'); } catch (e) { wrap.append(notice(e.message, true)); return; }
    const fig = (fid, k, v) => el('div', { class: 'figure' }, el('div', { class: 'v', id: fid, text: v }), el('div', { class: 'k', text: k }));
    const perSecond = r.claims_per_second && r.claims_per_second.length > 0;
    const canvas = el('canvas', { id: 'claims-chart' });
    const exportMsg = el('span', { class: 'small', id: 'export-status' });
    const exportBtn = el('button', { type: 'button', id: 'export-csv', text: 'Export claims (CSV)', onclick: async () => {
      exportBtn.disabled = true; exportMsg.textContent = 'preparing...';
      try {
        const resp = await fetch('/v1/campaigns/' + id + '/claims.csv', { headers: { Authorization: 'Bearer ' + token() } });
        if (!resp.ok) throw new Error('HTTP ' + resp.status);
        const blob = await resp.blob();
        const url = URL.createObjectURL(blob);
        const a = el('a', { href: url, download: 'claims-' + id + '.csv' });
        document.body.append(a); a.click(); a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10_000);
        exportMsg.textContent = 'downloaded (' + fmtInt(blob.size) + ' bytes)';
      } catch (e) { exportMsg.textContent = 'export failed: ' + e.message; }
      finally { exportBtn.disabled = false; }
    } });
    const top = (title, rows, tid) => el('div', { class: 'card' }, el('h2', { text: title }),
      rows.length ? el('table', { id: tid }, el('thead', {}, el('tr', {}, ['Id', 'Redemptions', 'Order lines'].map((h) => el('th', { text: h })))),
        el('tbody', {}, rows.map((e) => el('tr', {}, el('td', { text: e.id }), el('td', { text: fmtInt(e.redemptions) }), el('td', { text: money(e.line_cents) })))))
        : el('p', { class: 'small', text: 'No redemptions yet.' }));
    wrap.append(
      el('h1', {}, 'Report: ', el('a', { href: '#/drop/' + id, id: 'report-name', text: r.name })),
      el('p', {}, badge(r.status), ' ', el('span', { class: 'small' }, 'from ', local(r.starts_at), ' to ', local(r.ends_at), ' (', r.starts_at, ' - ', r.ends_at, ' UTC)')),
      el('div', { class: 'figures' },
        fig('rep-claimed', 'claimed', fmtInt(r.claimed)), fig('rep-persisted', 'persisted', fmtInt(r.persisted)),
        fig('rep-remaining', 'remaining', fmtInt(r.remaining)),
        fig('rep-sellout', 'sold out after', r.sold_out_after_ms === null ? '-' : (r.sold_out_after_ms / 1000).toFixed(1) + ' s'),
        fig('rep-redeemed', 'redeemed', fmtInt(r.redeemed)),
        fig('rep-rate', 'redemption rate', (100 * r.redemption_rate).toFixed(1) + ' %'),
        fig('rep-discount', 'discount given', money(r.discount_total_cents))),
      el('h2', { text: perSecond ? 'Claims per second' : 'Claims per minute' }), canvas,
      el('div', { class: 'actions' }, exportBtn, exportMsg),
      top('Top products', r.top_products, 'top-products'), top('Top categories', r.top_categories, 'top-categories'));
    const pts = perSecond
      ? r.claims_per_second.map((p) => [p.second.slice(11, 19), p.claims])
      : r.claims_per_minute.map((p) => [p.minute.slice(11, 16), p.claims]);
    barChart(canvas, pts, '#d9480f');
  }

  // ---- routing -------------------------------------------------------------

  function route() {
    if (stopLive) { stopLive(); stopLive = null; }
    if (!token()) { signIn(); return; }
    document.getElementById('nav').hidden = false;
    const h = location.hash || '#/drops';
    let m;
    if ((m = h.match(/^#\/drop\/([0-9A-Za-z]+)$/))) dropPage(m[1]);
    else if ((m = h.match(/^#\/report\/([0-9A-Za-z]+)$/))) reportPage(m[1]);
    else if (h === '#/new') newDropPage();
    else dropsPage(null, []);
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.getElementById('sign-out').addEventListener('click', () => { sessionStorage.removeItem(TOKEN); location.hash = '#/sign-in'; route(); });
    window.addEventListener('hashchange', route);
    route();
  });
})();
