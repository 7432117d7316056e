// The operator UI in a real headless Chromium (Debian's), against the real sluice-api.
// Started by scripts/test.d/60-ui.sh, which seeds the database and passes:
//   SLUICE_UI_BASE      the API's origin, e.g. http://127.0.0.1:41234
//   SLUICE_UI_READ      a read token (named "viewer")
//   SLUICE_UI_ADMIN     an admin token (named "alice")
//   SLUICE_UI_CANCELLED the id of a cancelled job of kind report.build
//   SLUICE_UI_ARTIFACTS where screenshots go
// It finds everything by role and accessible name, as an operator (or a screen reader)
// would, and fails if the page asks for anything outside the API's origin or logs an
// error (a CSP violation shows up as one).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { chromium } from 'playwright-core';

const base = process.env.SLUICE_UI_BASE;
const readToken = process.env.SLUICE_UI_READ;
const adminToken = process.env.SLUICE_UI_ADMIN;
const cancelledId = process.env.SLUICE_UI_CANCELLED;
const artifacts = process.env.SLUICE_UI_ARTIFACTS;
for (const [k, v] of Object.entries({ base, readToken, adminToken, cancelledId, artifacts })) {
  if (!v) throw new Error(`missing ${k}`);
}
fs.mkdirSync(artifacts, { recursive: true });
const origin = new URL(base).origin;
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-ui-chromium-'));

// A fresh profile directory (playwright passes it as --user-data-dir).
const browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});

const offOrigin = [];
const problems = [];
let step = 'start';
// Set while a page is expected to answer with an error status (the browser logs those).
let expectErrorStatus = false;

// Each part starts signed out, in its own tab.
async function newPage(viewport = { width: 1280, height: 900 }) {
  await browser.clearCookies();
  const page = await browser.newPage();
  await page.setViewportSize(viewport);
  const context = { close: () => page.close() };
  page.on('request', (req) => {
    const url = req.url();
    if (!url.startsWith(origin + '/')) offOrigin.push(`${step}: ${url}`);
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !(expectErrorStatus && msg.text().startsWith('Failed to load resource')))
      problems.push(`${step}: console error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`${step}: page error: ${err.message}`));
  return { context, page };
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}

async function signIn(page, token) {
  await page.goto(`${base}/ui`);
  // Not signed in: the UI sends us to the sign-in form.
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await page.getByLabel('Token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
}

async function api(pathname) {
  const r = await fetch(`${base}${pathname}`, { headers: { Authorization: `Bearer ${adminToken}` } });
  assert.equal(r.status, 200, pathname);
  return r.json();
}

try {
  // --- A read-only operator looks around and cannot act.
  step = 'read-only';
  {
    const { context, page } = await newPage();
    await page.goto(`${base}/ui/sign-in`);
    await shot(page, 'sign-in');
    await signIn(page, readToken);
    await page.getByText('Signed in as').waitFor();
    assert.match(await page.locator('.who').innerText(), /viewer/);
    // The backed-up kind is the first row.
    const firstRow = page.locator('tbody tr').first();
    assert.match(await firstRow.locator('th').innerText(), /email\.send/);
    assert.equal(await page.getByRole('button', { name: /^Pause / }).count(), 0, 'read token sees no Pause');
    await shot(page, 'overview-read-only');
    await page.goto(`${base}/ui/jobs/${cancelledId}`);
    await page.getByRole('heading', { name: `Job ${cancelledId}` }).waitFor();
    assert.equal(await page.getByRole('button', { name: 'Retry' }).count(), 0, 'read token sees no Retry');
    await page.getByText('read-only token').waitFor();
    // Even posting the form by hand is refused.
    expectErrorStatus = true;
    const resp = await page.goto(`${base}/ui/jobs/bulk?action=retry&state=failed`);
    assert.equal(resp.status(), 403);
    await page.getByText('can view everything but change nothing').waitFor();
    expectErrorStatus = false;
    await page.goto(`${base}/ui`);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByText('You are signed out.').waitFor();
    await context.close();
  }

  // --- An admin finds the backed-up kind, pauses it, retries jobs, reads the audit log.
  step = 'admin';
  {
    const { context, page } = await newPage();
    await signIn(page, adminToken);
    await shot(page, 'overview');
    // Keyboard: the first Tab lands on the skip link.
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Skip to content');
    const pause = page.getByRole('button', { name: 'Pause email.send' });
    await pause.click();
    await page.getByRole('status').filter({ hasText: 'Kind paused' }).waitFor();
    await page.getByRole('button', { name: 'Resume email.send' }).waitFor();
    const kinds = await api('/v1/kinds');
    assert.equal(kinds.kinds.find((k) => k.kind === 'email.send').paused, true);
    assert.equal(kinds.kinds.find((k) => k.kind === 'email.send').paused_by, 'alice');

    // The cancelled job, found through the filter.
    step = 'retry';
    await page.getByRole('link', { name: 'Jobs' }).click();
    await page.getByRole('heading', { name: 'Jobs' }).waitFor();
    await page.getByLabel('State').selectOption('cancelled');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.getByRole('link', { name: cancelledId, exact: true }).click();
    await page.getByRole('heading', { name: `Job ${cancelledId}` }).waitFor();
    await shot(page, 'job');
    await page.getByLabel('Reason for retry').fill('upstream fixed');
    await page.getByRole('button', { name: 'Retry' }).click();
    await page.getByRole('status').filter({ hasText: 'Job queued to run again.' }).waitFor();
    const job = await api(`/v1/jobs/${cancelledId}`);
    assert.equal(job.state, 'queued');

    // Bulk retry of the failed reports, with the count shown first.
    step = 'bulk';
    await page.goto(`${base}/ui/jobs?state=failed&kind=report.build`);
    await page.getByRole('button', { name: 'Retry matching jobs…' }).click();
    await page.getByRole('heading', { name: 'Retry jobs' }).waitFor();
    await shot(page, 'bulk-confirm');
    const confirm = page.getByRole('button', { name: /^Retry [\d,]+ jobs$/ });
    const n = (await confirm.innerText()).match(/[\d,]+/)[0];
    assert.ok(Number(n.replace(/,/g, '')) >= 3, n);
    await confirm.click();
    await page.getByRole('status').filter({ hasText: `Bulk retry done. ${n} jobs changed.` }).waitFor();
    const left = await api('/v1/jobs?state=failed&kind=report.build');
    assert.equal(left.jobs.length, 0, 'every failed report was retried');

    // Who did what.
    step = 'audit';
    await page.getByRole('link', { name: 'Audit log' }).click();
    await page.getByRole('heading', { name: 'Audit log' }).waitFor();
    const rows = await page.locator('tbody tr').allInnerTexts();
    const has = (re) => rows.some((r) => re.test(r));
    assert.ok(has(/alice\s+pause\s+kind:email\.send/), rows.join('\n'));
    assert.ok(has(new RegExp(`alice\\s+retry\\s+job:${cancelledId}\\s+upstream fixed`)), rows.join('\n'));
    assert.ok(has(/alice\s+bulk_retry\s+filter:state=failed,kind=report\.build/), rows.join('\n'));
    await shot(page, 'audit');
    await context.close();
  }

  // --- Readable on a phone.
  step = 'phone';
  {
    const { context, page } = await newPage({ width: 390, height: 844 });
    await signIn(page, readToken);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `the page scrolls sideways by ${overflow}px on a phone`);
    await shot(page, 'overview-phone');
    await page.goto(`${base}/ui/jobs/${cancelledId}`);
    await shot(page, 'job-phone');
    await context.close();
  }

  assert.deepEqual(offOrigin, [], 'requests left the API origin');
  assert.deepEqual(problems, [], 'console errors');
  console.log(`ui browser test: ok (screenshots in ${artifacts})`);
} catch (err) {
  console.error(`ui browser test failed at step ${step}:`, err);
  process.exitCode = 1;
} finally {
  await browser.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
