// The demo room (/demo/, clients/demo on chorus-kit) in a real browser:
// Debian's Chromium, headless, driven by playwright-core, three browser
// contexts on one node. The host plays the generated track; a listener and a
// late joiner follow it with the node's clock: their positions and the
// wall-clock instants their beats are scheduled at agree within 30 ms. Chat
// (with history for the late joiner), reactions with counts and the presence
// list (selective presence) reach every page.
//
// Screenshots: target/test-artifacts/demo/*.png (CHORUS_ARTIFACTS to put
// them elsewhere).

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { chromium } from 'playwright-core';

import { REPO, startNode, uid, waitFor } from './lib/node.mjs';

const ARTIFACTS = process.env.CHORUS_ARTIFACTS || path.join(REPO, 'target/test-artifacts/demo');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const DEMO = path.join(REPO, 'clients/demo/dist');
const SYNC_MS = 30;

let node;
let browser;
before(async () => {
  if (!existsSync(path.join(DEMO, 'demo.js'))) throw new Error(`demo room not built in ${DEMO} (scripts/lib.sh build_clients)`);
  mkdirSync(ARTIFACTS, { recursive: true });
  node = await startNode({ CHORUS_NODE_DEMO_DIR: DEMO });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // The demo's sound: WebAudio runs without a user gesture here.
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
});
after(async () => {
  await browser?.close();
  await node?.stop();
});

/** Opens the demo as `user` in a fresh browser context and joins `room`. */
async function open(room, user, { host = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${node.http}/demo/?room=${room}&user=${user}${host ? '&host=1' : ''}`);
  await page.click('#join button[type=submit]');
  await page.waitForFunction(() => window.chorusDemo !== undefined, null, { timeout: 15000 });
  await page.click('#sound');
  page.errors = errors;
  return page;
}

/** Each page's track position, all moved to the wall-clock instant of the first reading. */
async function positions(pages) {
  const readings = await Promise.all(pages.map((p) => p.evaluate(() => ({ pos: window.chorusDemo.position(), at: Date.now() }))));
  return readings.map((r) => r.pos - (r.at - readings[0].at));
}

/** For beats every page scheduled, how far apart (ms) the pages schedule them. */
async function beatSpread(pages) {
  const times = await Promise.all(pages.map((p) => p.evaluate(() => ({ ...window.chorusDemo.beatTimes }))));
  const common = Object.keys(times[0]).filter((beat) => times.every((t) => t[beat] !== undefined));
  const spreads = common.map((beat) => {
    const at = times.map((t) => t[beat]);
    return Math.max(...at) - Math.min(...at);
  });
  return { beats: common.length, worst: Math.max(0, ...spreads) };
}

const spread = (xs) => Math.max(...xs) - Math.min(...xs);

describe('the demo room in headless Chromium, three contexts', () => {
  test('listeners hear the host in sync, a late joiner too; chat, reactions and presence reach everyone', async () => {
    const room = uid('demo').replace(/[^A-Za-z0-9_-]/g, '');
    const ana = await open(room, 'ana', { host: true });
    const bo = await open(room, 'bo');
    await ana.waitForSelector('#host-controls:not([hidden])');

    // Chat before the late joiner arrives: it must get it as history.
    await bo.fill('#text', 'hola from bo');
    await bo.click('#say button[type=submit]');
    await waitFor(async () => (await ana.evaluate(() => window.chorusDemo.messages().length)) === 1, 5000, 'bo’s message on ana');

    await ana.click('#play');
    await waitFor(async () => (await bo.evaluate(() => window.chorusDemo.position())) !== null, 5000, 'playback on bo');
    await new Promise((r) => setTimeout(r, 1500));
    const two = await positions([ana, bo]);
    assert.ok(spread(two) < SYNC_MS, `host and listener positions ${two} differ by ${spread(two)} ms`);
    assert.ok(two[0] > 1000, `the track moves: ${two}`);

    const cy = await open(room, 'cy');
    await waitFor(async () => (await cy.evaluate(() => window.chorusDemo.position())) !== null, 5000, 'playback on the late joiner');
    await new Promise((r) => setTimeout(r, 1500));
    const three = await positions([ana, bo, cy]);
    assert.ok(spread(three) < SYNC_MS, `positions ${three} differ by ${spread(three)} ms`);
    const beats = await beatSpread([ana, bo, cy]);
    assert.ok(beats.beats >= 2, `beats scheduled on all three pages: ${beats.beats}`);
    assert.ok(beats.worst < SYNC_MS, `beats scheduled ${beats.worst} ms apart`);
    for (const page of [ana, bo, cy]) {
      assert.equal(await page.evaluate(() => window.chorusDemo.soundOn()), true, 'WebAudio runs');
    }
    // What this run measured, kept beside the screenshots.
    writeFileSync(
      path.join(ARTIFACTS, 'sync.json'),
      JSON.stringify(
        {
          position_spread_ms: { host_and_listener: spread(two), with_late_joiner: spread(three) },
          beats_compared: beats.beats,
          beat_schedule_spread_ms: beats.worst,
          limit_ms: SYNC_MS,
        },
        null,
        2,
      ) + '\n',
    );

    // History for the late joiner, live chat for everyone.
    await waitFor(
      async () => JSON.stringify(await cy.evaluate(() => window.chorusDemo.messages())) === JSON.stringify([{ user: 'bo', text: 'hola from bo', replayed: true }]),
      5000,
      'the history on cy',
    );
    await cy.fill('#text', 'late but here');
    await cy.click('#say button[type=submit]');
    for (const page of [ana, bo, cy]) {
      await waitFor(async () => (await page.evaluate(() => window.chorusDemo.messages().map((m) => m.text))).includes('late but here'), 5000, 'cy’s message');
    }

    // Reactions with counts.
    await cy.click('[data-emoji="🔥"]');
    await cy.click('[data-emoji="🔥"]');
    await bo.click('[data-emoji="🎉"]');
    for (const page of [ana, bo, cy]) {
      await waitFor(async () => {
        const counts = await page.evaluate(() => window.chorusDemo.counts());
        return counts['🔥'] === 2 && counts['🎉'] === 1;
      }, 5000, 'the reaction counts');
      assert.equal(await page.textContent('[data-count="🔥"]'), '2');
    }

    // Presence: everyone on every page, the host marked.
    for (const page of [ana, bo, cy]) {
      await waitFor(async () => (await page.evaluate(() => window.chorusDemo.members())).join() === 'ana,bo,cy', 5000, 'everyone present');
      assert.equal(await page.locator('#members li').count(), 3);
    }
    assert.match(await ana.textContent('#members li[data-user="ana"]'), /host/);

    // Pause: everyone stops at the same place.
    // The host's page takes the paused state when the node acks her push,
    // the listeners when the broadcast reaches them: either may come first.
    await ana.click('#pause');
    for (const [name, page] of [['ana', ana], ['bo', bo], ['cy', cy]]) {
      await waitFor(async () => (await page.evaluate(() => window.chorusDemo.room.playback?.playing)) === false, 5000, `the pause on ${name}`);
    }
    const paused = await Promise.all([ana, bo, cy].map((p) => p.evaluate(() => window.chorusDemo.position())));
    assert.equal(new Set(paused).size, 1, `paused positions ${paused}`);

    for (const [name, page] of [['host-ana', ana], ['listener-bo', bo], ['late-cy', cy]]) {
      await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
      assert.deepEqual(page.errors, [], `${name}: page errors`);
    }
  });
});
