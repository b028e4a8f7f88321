// The operator dashboard in a real browser: Debian's Chromium, headless,
// driven by playwright-core. The page's numbers must move when real
// realtime-js clients load the node, and with auth on the page must ask for a
// service_role token (made with `chorus gentoken`) before it shows anything.
//
// Screenshots: target/test-artifacts/dashboard/*.png (CHORUS_ARTIFACTS to
// put them elsewhere).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { chromium } from 'playwright-core';

import {
  CHORUS_BIN,
  REPO,
  closeAll,
  realtime,
  startNode,
  subscribe,
  uid,
  waitFor,
} from './lib/node.mjs';

const ARTIFACTS = process.env.CHORUS_ARTIFACTS || path.join(REPO, 'target/test-artifacts/dashboard');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

let browser;
before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Without the background-networking flags Chromium keeps trying hosts
    // this machine cannot reach.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});
after(async () => {
  await closeAll();
  await browser?.close();
});

/** The number a card shows ("1,234" → 1234; "–" → NaN). */
async function shown(page, id) {
  const text = (await page.textContent(`#${id}`)) ?? '';
  return Number(text.replace(/,/g, ''));
}

async function openDashboard(node) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const res = await page.goto(`${node.http}/dashboard`);
  assert.equal(res.status(), 200);
  page.errors = errors;
  return page;
}

describe('open node', () => {
  let node;
  before(async () => {
    node = await startNode({ CHORUS_NODE_NAME: 'dash-e2e' });
  });
  after(async () => {
    await closeAll();
    await node?.stop();
  });

  test('the dashboard shows the node idle, then its numbers move under load', async () => {
    const page = await openDashboard(node);
    await page.waitForFunction(() => document.querySelector('#status')?.textContent === 'live', null, { timeout: 10000 });
    assert.equal(await page.textContent('#node'), 'dash-e2e');
    assert.equal(await shown(page, 'sessions'), 0);
    assert.equal(await shown(page, 'messages_in_per_s'), 0);
    await page.screenshot({ path: path.join(ARTIFACTS, 'idle.png'), fullPage: true });

    // Load: 20 realtime-js clients in one room's chat lane (stored), one of
    // them publishing about 40 messages a second.
    const topic = `room:${uid('dash')}:chat`;
    const clients = [];
    for (let i = 0; i < 20; i++) {
      const c = realtime(node, '2.0.0');
      const ch = c.channel(topic, { config: { broadcast: { self: false } } });
      await subscribe(ch);
      clients.push(ch);
    }
    let sent = 0;
    const publisher = setInterval(() => {
      for (let i = 0; i < 4; i++) {
        clients[0].send({ type: 'broadcast', event: 'chat', payload: { n: sent++ } });
      }
    }, 100);
    try {
      await waitFor(
        async () =>
          (await shown(page, 'sessions')) === 20 &&
          (await shown(page, 'channels')) >= 1 &&
          (await shown(page, 'messages_in_per_s')) > 0 &&
          (await shown(page, 'messages_out_per_s')) > (await shown(page, 'messages_in_per_s')) &&
          (await page.textContent('#store_p50')) !== '–' &&
          (await page.textContent('#fanout_p99')) !== '–',
        20000,
        'the dashboard to show the load',
      );
      await page.screenshot({ path: path.join(ARTIFACTS, 'under-load.png'), fullPage: true });
    } finally {
      clearInterval(publisher);
    }
    // The page kept polling: its numbers are the node's, not a cached copy.
    const stats = await (await fetch(`${node.http}/dashboard/stats`)).json();
    assert.equal(stats.sessions, 20);
    assert.ok(stats.store.latency.count > 0, JSON.stringify(stats.store));
    assert.deepEqual(page.errors, [], 'no script errors on the page');
    await page.close();
  });
});

describe('node with auth', () => {
  const secret = 'dashboard-browser-secret';
  let node;
  before(async () => {
    node = await startNode({ CHORUS_JWT_SECRET: secret });
  });
  after(async () => {
    await node?.stop();
  });

  test('the page asks for a service_role token, then shows the node', async () => {
    const page = await openDashboard(node);
    await page.waitForSelector('#login.shown', { timeout: 10000 });
    assert.equal(await page.textContent('#status'), 'token needed');
    assert.ok(Number.isNaN(await shown(page, 'sessions')), 'no numbers without a token');
    await page.screenshot({ path: path.join(ARTIFACTS, 'auth-token-needed.png'), fullPage: true });

    const token = execFileSync(CHORUS_BIN, ['gentoken', '--sub', 'ops', '--role', 'service_role', '--exp', '10m'], {
      env: { PATH: process.env.PATH, CHORUS_JWT_SECRET: secret },
    })
      .toString()
      .trim();
    await page.fill('#token', token);
    await page.click('#login-form button');
    await page.waitForFunction(() => document.querySelector('#status')?.textContent === 'live', null, { timeout: 10000 });
    assert.equal(await shown(page, 'sessions'), 0);
    assert.ok(!(await page.isVisible('#login')), 'the token form is gone');
    await page.screenshot({ path: path.join(ARTIFACTS, 'auth-live.png'), fullPage: true });
    assert.deepEqual(page.errors, []);
    await page.close();
  });
});
