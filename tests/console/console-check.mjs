// The console in a real browser (scripts/console-check starts the service
// and runs this): Playwright drives Debian's Chromium through every page a
// marketing user needs. Fails (exit 1) on the first broken expectation, on
// any 5xx seen by the page, and on any console error of the page.
//
// Environment: CONSOLE_URL (the service), ADMIN_TOKEN, LOADTEST (path of
// flashgrab-loadtest, run against the drop made through the form; it reads
// FLASHGRAB_USER_JWT_SECRET from the environment), SHOTS (directory for the
// screenshots), CHROMIUM (default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const base = process.env.CONSOLE_URL;
const admin = process.env.ADMIN_TOKEN;
const shots = process.env.SHOTS || 'target/console';
const STOCK = 400;
mkdirSync(shots, { recursive: true });

const log = (...a) => console.log('[console-check]', ...a);
function check(cond, what) {
  if (!cond) throw new Error('EXPECTATION FAILED: ' + what);
  log('ok:', what);
}

async function api(method, path, body) {
  const r = await fetch(base + path, {
    method,
    headers: Object.assign({ Authorization: 'Bearer ' + admin }, body ? { 'Content-Type': 'application/json' } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: r.status, body: await r.json() };
}

// datetime-local value in the browser's zone for `offsetMs` from now.
function localInput(offsetMs) {
  const d = new Date(Date.now() + offsetMs);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
let load = null;
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const serverErrors = [];
  const pageErrors = [];
  page.on('response', (r) => { if (r.status() >= 500) serverErrors.push(`${r.status()} ${r.url()}`); });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });

  // 1. Sign in: nothing is shown before the token; a wrong one is refused.
  await page.goto(base + '/console');
  await page.waitForSelector('#sign-in');
  check(!(await page.locator('#drops-table').count()), 'no data before signing in');
  await page.fill('#token', 'not-the-token');
  await page.click('#sign-in-submit');
  await page.waitForSelector('#sign-in-error:has-text("refused")');
  check(true, 'a wrong token is refused');
  await page.screenshot({ path: join(shots, '1-sign-in.png') });
  await page.fill('#token', admin);
  await page.click('#sign-in-submit');
  await page.waitForSelector('#drops');
  check(await page.evaluate(() => sessionStorage.getItem('flashgrab.adminToken')) === admin, 'the token sits in sessionStorage');
  check(!page.url().includes(admin) && (await context.cookies()).length === 0, 'the token is in no URL and no cookie');

  // 2. New drop through the form; the first try has an invalid field.
  await page.click('#nav-new');
  await page.waitForSelector('#new-drop');
  await page.fill('#f-name', 'Browser drop');
  await page.fill('#f-total', String(STOCK));
  await page.fill('#f-starts', localInput(12_000));
  await page.fill('#f-ends', localInput(6_000)); // before the start: the server says which field
  await page.selectOption('#f-type', 'percent');
  await page.fill('#f-percent', '15');
  await page.fill('#f-cap', '20');
  await page.fill('#f-min-spend', '50');
  await page.fill('#f-categories', 'shoes, bags');
  await page.fill('#f-days', '7');
  await page.click('#create-submit');
  const inline = page.locator('[data-field="ends_at"].invalid [data-error-for="ends_at"]');
  await inline.waitFor();
  check((await inline.textContent()).includes('after starts_at'), 'the 400 field (ends_at) is shown next to its input');
  await page.screenshot({ path: join(shots, '2-new-drop-invalid.png'), fullPage: true });
  await page.fill('#f-starts', localInput(12_000));
  await page.fill('#f-ends', localInput(3_600_000));
  await page.click('#create-submit');
  await page.waitForSelector('#drop-name');
  const dropId = page.url().split('#/drop/')[1];
  check(/^[0-9A-Z]{26}$/.test(dropId), 'the form made drop ' + dropId + ' and opened it');
  const made = await api('GET', '/v1/campaigns/' + dropId);
  check(made.body.coupon.discount.type === 'percent' && made.body.coupon.discount.max_cents === 2000 &&
    made.body.coupon.min_spend_cents === 5000 && made.body.coupon.applies_to.category_ids.length === 2, 'every form field reached the API');
  check((await api('GET', '/v1/campaigns?limit=1000')).body.campaigns.length === 1, 'one submit, one drop');

  // 3. Live: scheduled, then live and sold out while the load runs; the
  //    numbers change on the page without a reload.
  await page.waitForSelector('#live-state:has-text("live")');
  await page.waitForSelector('#drop-status [data-status="scheduled"]');
  await page.screenshot({ path: join(shots, '3-drop-scheduled.png'), fullPage: true });
  load = spawn(process.env.LOADTEST, ['drop', '--url', base, '--campaign', dropId, '--users', '1500', '--rate', '100',
    '--duration', '20', '--concurrency', '16', '--no-report', '--admin-token', admin], { stdio: ['ignore', 'inherit', 'inherit'] });
  const loadDone = new Promise((resolve) => load.on('exit', (code) => resolve(code)));
  await page.waitForSelector('#drop-status [data-status="live"]', { timeout: 30_000 });
  check(true, 'the drop went live on the page');
  const seen = new Set();
  const deadline = Date.now() + 60_000;
  let midShot = false;
  while (Date.now() < deadline) {
    seen.add(await page.textContent('#fig-remaining'));
    if (!midShot && seen.size >= 3) { await page.screenshot({ path: join(shots, '4-drop-live.png'), fullPage: true }); midShot = true; }
    if (await page.locator('#drop-status [data-status="sold_out"]').count()) break;
    await page.waitForTimeout(200);
  }
  check(await page.locator('#drop-status [data-status="sold_out"]').count() === 1, 'the drop sold out on the page');
  check(seen.size >= 3, 'the live numbers changed: remaining went ' + [...seen].join(' -> '));
  await page.waitForFunction(() => document.querySelector('#fig-remaining').textContent === '0');
  await page.screenshot({ path: join(shots, '5-drop-sold-out.png'), fullPage: true });
  const code = await loadDone;
  load = null;
  check(code === 0, 'the load run held every invariant (exit ' + code + ')');

  // 4. Report and CSV: the rows match the stats.
  let stats;
  for (let i = 0; i < 100; i++) {
    stats = (await api('GET', '/v1/campaigns/' + dropId + '/stats')).body;
    if (stats.persisted === stats.claimed) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  check(stats.claimed === STOCK && stats.persisted === STOCK, 'every unit claimed and persisted');
  await page.click('#report-link');
  await page.waitForSelector('#report-name');
  check((await page.textContent('#rep-claimed')) === STOCK.toLocaleString('en-US'), 'the report shows the claims');
  check((await page.textContent('#rep-sellout')).endsWith(' s'), 'the report shows the time to sell out');
  check((await page.textContent('h2:has-text("Claims per")')).includes('second'), 'a short drop is charted per second');
  await page.screenshot({ path: join(shots, '6-report.png'), fullPage: true });
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  const file = join(shots, 'claims.csv');
  await download.saveAs(file);
  const lines = readFileSync(file, 'utf8').trim().split('\n');
  check(lines[0] === 'coupon_id,user_id,claimed_at,status,order_id,redeemed_at,discount_cents', 'the CSV has the documented header');
  check(lines.length - 1 === stats.persisted, `the CSV has ${lines.length - 1} rows, the stats say ${stats.persisted} persisted`);

  // 5. Edit: a decrease below what is claimed is refused inline; a rename works.
  await page.click('#report-name');
  await page.waitForSelector('#drop-name');
  await page.click('#edit-drop');
  await page.fill('#e-total', '10');
  await page.click('#edit-submit');
  await page.waitForSelector('#edit-form [data-field="total_stock"].invalid');
  check(true, 'a decrease below the claims is refused next to the field (409)');
  await page.fill('#e-total', String(STOCK));
  await page.fill('#e-name', 'Browser drop (renamed)');
  await page.click('#edit-submit');
  await page.waitForSelector('#drop-name:has-text("renamed")');
  check(true, 'a rename is saved');

  // 6. Close another drop, with the confirm dialog.
  const other = await api('POST', '/v1/campaigns', {
    name: 'To be closed', total_stock: 50, starts_at: new Date(Date.now() - 1000).toISOString(),
    ends_at: new Date(Date.now() + 3_600_000).toISOString(), coupon: { discount: { type: 'fixed', amount_cents: 500 }, valid_for_days: 3 },
  });
  check(other.status === 201, 'a second drop is staged');
  await page.click('#nav-drops');
  await page.waitForSelector(`#drops-table tr[data-id="${other.body.id}"] .drop-link`);
  await page.screenshot({ path: join(shots, '7-drops.png'), fullPage: true });
  await page.click(`#drops-table tr[data-id="${other.body.id}"] .drop-link`);
  await page.waitForSelector('#drop-status [data-status="live"]');
  page.once('dialog', (d) => d.accept());
  await page.click('#close-drop');
  await page.waitForSelector('#drop-status [data-status="ended"]');
  check((await api('GET', '/v1/campaigns/' + other.body.id)).body.status === 'ended', 'the other drop is closed');
  await page.screenshot({ path: join(shots, '8-closed.png'), fullPage: true });

  // 7. Sign out: the token is gone, the page shows nothing again.
  await page.click('#sign-out');
  await page.waitForSelector('#sign-in');
  check(await page.evaluate(() => sessionStorage.getItem('flashgrab.adminToken')) === null, 'signing out forgets the token');

  check(serverErrors.length === 0, 'no 5xx answered to the console' + (serverErrors.length ? ': ' + serverErrors.join(', ') : ''));
  // The 4xx answers the console shows (401, 400, 409) are logged by the
  // browser as failed loads; anything else is a script error.
  const scriptErrors = pageErrors.filter((e) => !/status of 4\d\d/.test(e));
  check(scriptErrors.length === 0, 'no script error on any page' + (scriptErrors.length ? ': ' + scriptErrors.join(' | ') : ''));
  log('all checks passed; screenshots in', shots);
} finally {
  if (load) load.kill('SIGTERM');
  await browser.close();
}
