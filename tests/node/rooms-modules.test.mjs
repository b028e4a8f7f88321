// Process modules loaded at run time (docs/MODULES.md; src/modules/,
// host-bridge/src/modules.rs): `.wasm` files in modules.dir, each run by a
// supervised process, screen every message on a room's chat lane before it
// is stored and delivered. The shipped `moderation` module (its own crate,
// built separately from the node): `mask` replaces blocked words with `*`
// for everyone and in storage; `reject` refuses the message. A crashed
// module is restarted by the `modules` supervisor; meanwhile
// `modules.fail_open` decides. Modules are added and changed by a reload
// (admin call or SIGHUP), and bad modules are refused, each with an error
// naming it, while the node keeps serving.

import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  closeAll,
  RawClient,
  realtime,
  recordingChannel,
  REPO,
  startNode,
  subscribe,
  uid,
  VSNS,
  waitFor,
  metric,
} from './lib/node.mjs';

const REJECT_REASON = 'moderated: contains a blocked word';

/** The shipped modules (scripts/lib.sh build_modules) and the test fixture. */
const BUILT = {
  moderation: path.join(REPO, 'target/modules/moderation.wasm'),
  slowmode: path.join(REPO, 'target/modules/slowmode.wasm'),
  faulty: path.join(REPO, 'target/wasm32-wasip1/release/faulty.wasm'),
};
for (const [name, file] of Object.entries(BUILT)) {
  if (!existsSync(file)) throw new Error(`module ${name} not built at ${file} (scripts/test.sh builds it)`);
}

/** A fresh modules directory holding `modules`: {name: settings TOML or null}. */
function modulesDir(modules = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chorus-modules-'));
  for (const [name, settings] of Object.entries(modules)) install(dir, name, settings);
  return dir;
}

/** Drops module `name` (built file `from`, default its own) with its settings in `dir`. */
function install(dir, name, settings = null, from = BUILT[name]) {
  copyFileSync(from, path.join(dir, `${name}.wasm`));
  if (settings !== null) writeFileSync(path.join(dir, `${name}.toml`), settings);
}

async function modulesReport(node, method = 'GET') {
  const url = method === 'GET' ? '/realtime/v1/api/modules' : '/realtime/v1/api/modules/reload';
  const res = await fetch(`${node.http}${url}`, { method, headers: { apikey: 'anon' }, signal: AbortSignal.timeout(30000) });
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

const statusOf = (report, name) => report.modules.find((m) => m.name === name);

/** Stored messages of `topic`, newest first. */
async function stored(node, topic) {
  const res = await fetch(
    `${node.http}/realtime/v1/api/channels/${encodeURIComponent(topic)}/messages?limit=100`,
    { headers: { apikey: 'anon' }, signal: AbortSignal.timeout(5000) },
  );
  assert.equal(res.status, 200);
  return (await res.json()).messages;
}

/** A realtime-js sender (ack on) and a recording receiver on `topic`. */
async function pair(node, vsn, topic) {
  const sender = realtime(node, vsn).channel(topic, { config: { broadcast: { ack: true } } });
  const receiver = recordingChannel(realtime(node, vsn), topic);
  await subscribe(sender);
  await subscribe(receiver);
  return { sender, receiver };
}

/** A raw client joined to `topic` with ack on, as `user`; `send` resolves with the reply. */
async function rawSender(node, vsn, topic, user = '') {
  const c = await RawClient.open(node, vsn);
  const r = await c.join(topic, { broadcast: { ack: true, self: false }, presence: { key: user } });
  assert.equal(r.status, 'ok', JSON.stringify(r));
  c.send = (event, payload) =>
    c.reply(c.push(topic, 'broadcast', { type: 'broadcast', event, payload }, { join_ref: c.joinRefs[topic] }));
  return c;
}

describe('moderation, action mask (fail open)', () => {
  let node;
  before(async () => {
    node = await startNode({
      CHORUS_MODULES_DIR: modulesDir({ moderation: 'words = ["badword", "Ärger"]\n' }),
      // Generous, so that a loaded machine cannot turn a verdict into a timeout.
      CHORUS_MODULES_TIMEOUT_MS: '2000',
      CHORUS_NODE_FAULT_INJECTION: 'true',
    });
  });
  after(async () => {
    await closeAll();
    await node?.stop();
  });

  for (const vsn of VSNS) {
    test(`${vsn}: a blocked word reaches the other client masked and is stored masked`, async () => {
      const topic = `room:${uid('m')}:chat`;
      const { sender, receiver } = await pair(node, vsn, topic);
      const verdicts = await metric(node, 'chorus_module_verdicts_total');
      const payload = {
        text: 'what a BadWord! no ÄRGER here, badwords stay',
        nested: { list: ['badword', 3, { deep: 'x BADWORD y' }] },
        badword: true,
      };
      assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload }), 'ok');
      const masked = {
        text: 'what a *******! no ***** here, badwords stay',
        nested: { list: ['*******', 3, { deep: 'x ******* y' }] },
        badword: true,
      };
      await waitFor(() => receiver.got.length === 1, 5000, 'the masked message');
      assert.deepEqual(receiver.got[0].payload, masked);
      const history = await stored(node, topic);
      assert.equal(history.length, 1, JSON.stringify(history));
      assert.deepEqual(history[0].payload, masked);
      assert.equal(await metric(node, 'chorus_module_verdicts_total'), verdicts + 1);
    });
  }

  test('clean messages pass unchanged, delivered and stored as sent', async () => {
    const topic = `room:${uid('c')}:chat`;
    const { sender, receiver } = await pair(node, '2.0.0', topic);
    const verdicts = await metric(node, 'chorus_module_verdicts_total');
    const payloads = [
      { text: 'hello there', n: 1 },
      { text: 'a bad word, split in two', list: ['Bad', 'Word'] },
      { text: 'ärgerlich', emoji: '🔥' },
    ];
    for (const payload of payloads) {
      assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload }), 'ok');
    }
    await waitFor(() => receiver.got.length === payloads.length, 5000, 'all clean messages');
    assert.deepEqual(receiver.got.map((m) => m.payload), payloads);
    const history = await stored(node, topic);
    assert.deepEqual(history.map((m) => m.payload).reverse(), payloads);
    assert.equal(await metric(node, 'chorus_module_verdicts_total'), verdicts);
  });

  test('topics that are not a chat lane are not filtered', async () => {
    const id = uid('n');
    for (const topic of [`room:${id}:reactions`, `lobby-${id}`, `room:${id}:chatter`]) {
      const { sender, receiver } = await pair(node, '2.0.0', topic);
      const payload = { text: 'badword', emoji: 'badword' };
      assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload }), 'ok');
      await waitFor(() => receiver.got.length === 1, 5000, `a broadcast on ${topic}`);
      assert.deepEqual(receiver.got[0].payload, payload, topic);
    }
  });

  test('a crashed module is restarted by its supervisor; meanwhile fail_open delivers', async () => {
    const topic = `room:${uid('k')}:chat`;
    const { sender, receiver } = await pair(node, '2.0.0', topic);
    const restarts = await metric(node, 'chorus_restarts_total');
    const timeouts = await metric(node, 'chorus_module_timeouts_total');
    // The module process panics on this event (node.fault_injection only):
    // it never answers, so after modules.timeout_ms the message goes through
    // unscreened.
    const crash = { text: 'badword before the crash' };
    assert.equal(await sender.send({ type: 'broadcast', event: 'chorus_crash_module', payload: crash }), 'ok');
    await waitFor(() => receiver.got.length === 1, 5000, 'the message that crashed the module');
    assert.deepEqual(receiver.got[0].payload, crash);
    assert.equal(await metric(node, 'chorus_module_timeouts_total'), timeouts + 1);
    await waitFor(
      async () => (await metric(node, 'chorus_restarts_total')) > restarts,
      5000,
      'the modules supervisor to restart moderation',
    );
    assert.match(node.logs(), /supervisor `modules`: restarted child `module-moderation`/);
    // The new incarnation screens again.
    assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload: { text: 'BadWord' } }), 'ok');
    await waitFor(() => receiver.got.length === 2, 5000, 'a message after the restart');
    assert.deepEqual(receiver.got[1].payload, { text: '*******' });
  });
});

describe('moderation, action reject (fail closed)', () => {
  let node;
  before(async () => {
    node = await startNode({
      CHORUS_MODULES_DIR: modulesDir({ moderation: 'words = ["badword"]\naction = "reject"\n' }),
      CHORUS_MODULES_ENABLED: 'moderation',
      CHORUS_MODULES_FAIL_OPEN: 'false',
      CHORUS_MODULES_TIMEOUT_MS: '2000',
      CHORUS_NODE_FAULT_INJECTION: 'true',
    });
  });
  after(async () => {
    await closeAll();
    await node?.stop();
  });

  for (const vsn of VSNS) {
    test(`${vsn}: the sender gets the moderated error, nobody receives it, nothing is stored`, async () => {
      const topic = `room:${uid('r')}:chat`;
      const { sender, receiver } = await pair(node, vsn, topic);
      const raw = await rawSender(node, vsn, `realtime:${topic}`);
      const verdicts = await metric(node, 'chorus_module_verdicts_total');

      // realtime-js with ack: send() resolves 'error' on an error reply.
      const bad = { text: 'you BadWord', more: ['x'] };
      assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload: bad }), 'error');
      // The reply carries the reason (seen on the wire).
      assert.deepEqual(await raw.send('msg', { nested: [{ t: 'badword!' }] }), {
        status: 'error',
        response: { reason: REJECT_REASON },
      });
      // A clean message after them: the channel's order makes it the first
      // thing the receiver may get.
      assert.deepEqual(await raw.send('msg', { text: 'clean' }), { status: 'ok', response: {} });
      await waitFor(() => receiver.got.length >= 1, 5000, 'the clean message');
      assert.deepEqual(receiver.got.map((m) => m.payload), [{ text: 'clean' }]);
      assert.deepEqual((await stored(node, topic)).map((m) => m.payload), [{ text: 'clean' }]);
      assert.equal(await metric(node, 'chorus_module_verdicts_total'), verdicts + 2);
    });
  }

  test('a crashed module fails closed: "module moderation unavailable", then it is back', async () => {
    const topic = `room:${uid('f')}:chat`;
    const { receiver } = await pair(node, '2.0.0', topic);
    const raw = await rawSender(node, '2.0.0', `realtime:${topic}`);
    const restarts = await metric(node, 'chorus_restarts_total');
    assert.deepEqual(await raw.send('chorus_crash_module', { text: 'hi' }), {
      status: 'error',
      response: { reason: 'module moderation unavailable' },
    });
    await waitFor(
      async () => (await metric(node, 'chorus_restarts_total')) > restarts,
      5000,
      'the modules supervisor to restart moderation',
    );
    // Back up: it rejects again, and clean messages pass.
    await waitFor(
      async () => (await raw.send('msg', { text: 'badword' })).response.reason === REJECT_REASON,
      5000,
      'the restarted module to answer',
    );
    assert.deepEqual(await raw.send('msg', { text: 'fine' }), { status: 'ok', response: {} });
    await waitFor(() => receiver.got.length >= 1, 5000, 'the clean message');
    assert.deepEqual(receiver.got.map((m) => m.payload), [{ text: 'fine' }]);
    assert.deepEqual((await stored(node, topic)).map((m) => m.payload), [{ text: 'fine' }]);
  });
});

describe('late module answers', () => {
  let node;
  before(async () => {
    node = await startNode({
      CHORUS_MODULES_DIR: modulesDir({ moderation: 'words = "badword"\n' }),
      CHORUS_NODE_FAULT_INJECTION: 'true',
    });
  });
  after(async () => {
    await closeAll();
    await node?.stop();
  });

  test('are ignored by the channel, which keeps delivering in order (fail open)', async () => {
    const topic = `room:${uid('l')}:chat`;
    const { sender, receiver } = await pair(node, '2.0.0', topic);
    const restarts = await metric(node, 'chorus_restarts_total');
    const timeouts = await metric(node, 'chorus_module_timeouts_total');
    // The module answers this one 100 ms after the channel stopped waiting
    // (node.fault_injection): delivered unscreened, and its verdict reaches
    // the channel's inbox late.
    let i = 0;
    const send = (event) => sender.send({ type: 'broadcast', event, payload: { i: i++, text: 'badword' } });
    assert.equal(await send('chorus_slow_module'), 'ok');
    await waitFor(() => receiver.got.length === 1, 5000, 'the slow message');
    assert.deepEqual(receiver.got[0].payload, { i: 0, text: 'badword' });
    assert.equal(await metric(node, 'chorus_module_timeouts_total'), timeouts + 1);
    // Messages behind it wait in the module's queue and may time out too;
    // once the module caught up, they are masked again.
    await waitFor(
      async () => {
        assert.equal(await send('msg'), 'ok');
        await waitFor(() => receiver.got.length === i, 5000, `message ${i - 1}`);
        return receiver.got[i - 1].payload.text === '*******';
      },
      5000,
      'the module to screen again',
    );
    assert.deepEqual(receiver.got.map((m) => m.payload.i), [...Array(i).keys()]);
    assert.equal(await metric(node, 'chorus_restarts_total'), restarts, 'a process was restarted');
    assert.equal((await stored(node, topic)).length, i);
  });
});

describe('modules loaded at run time', () => {
  let node;
  let dir;
  before(async () => {
    dir = modulesDir();
    node = await startNode({ CHORUS_MODULES_DIR: dir, CHORUS_MODULES_TIMEOUT_MS: '2000' });
  });
  after(async () => {
    await closeAll();
    await node?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a module dropped in the directory acts on chat after a reload, a changed one after the next', async () => {
    const topic = `room:${uid('d')}:chat`;
    const { sender, receiver } = await pair(node, '2.0.0', topic);
    assert.deepEqual((await modulesReport(node)).pipeline, []);
    assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload: { text: 'badword' } }), 'ok');

    install(dir, 'moderation', 'words = ["badword"]\n');
    const report = await modulesReport(node, 'POST');
    assert.deepEqual(report.pipeline, ['moderation'], JSON.stringify(report));
    assert.equal(statusOf(report, 'moderation').status, 'ready');
    assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload: { text: 'badword' } }), 'ok');

    // New settings, same wasm: the next reload builds a fresh instance.
    writeFileSync(path.join(dir, 'moderation.toml'), 'words = ["other"]\n');
    await modulesReport(node, 'POST');
    assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload: { text: 'badword other' } }), 'ok');

    await waitFor(() => receiver.got.length === 3, 5000, 'three messages');
    assert.deepEqual(receiver.got.map((m) => m.payload.text), ['badword', '*******', 'badword *****']);
    assert.match(node.logs(), /module moderation: process started/);
  });

  test('SIGHUP reloads too: slowmode limits each user, and a removed module stops', async () => {
    const topic = `realtime:room:${uid('s')}:chat`;
    const ana = await rawSender(node, '2.0.0', topic, 'ana');
    const bo = await rawSender(node, '2.0.0', topic, 'bo');
    install(dir, 'slowmode', 'messages = 2\nper_seconds = 60\n');
    node.child.kill('SIGHUP');
    await waitFor(async () => statusOf(await modulesReport(node), 'slowmode')?.status === 'ready', 10000, 'slowmode loaded');
    // The manager starts its process within a second of the reload.
    await waitFor(() => node.logs().includes('module slowmode: process started'), 10000, 'the slowmode process');
    assert.deepEqual(await ana.send('msg', { text: 'one' }), { status: 'ok', response: {} });
    assert.deepEqual(await ana.send('msg', { text: 'two' }), { status: 'ok', response: {} });
    const refused = await ana.send('msg', { text: 'three' });
    assert.equal(refused.status, 'error');
    assert.match(refused.response.reason, /^slowmode: at most 2 messages per 60 s in this room; wait \d+ s$/);
    // Another user has a budget of their own.
    assert.deepEqual(await bo.send('msg', { text: 'hi' }), { status: 'ok', response: {} });

    rmSync(path.join(dir, 'slowmode.wasm'));
    const report = await modulesReport(node, 'POST');
    assert.equal(statusOf(report, 'slowmode'), undefined);
    assert.deepEqual(await ana.send('msg', { text: 'free again' }), { status: 'ok', response: {} });
    assert.match(node.logs(), /module slowmode: process stopped/);
  });
});

/** A module that exports only `chorus_abi_version() -> i32 { 2 }`, by hand. */
function abiTwoModule() {
  const name = Buffer.from('chorus_abi_version');
  return Buffer.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // types: () -> i32
    0x03, 0x02, 0x01, 0x00, // functions: one of type 0
    0x07, name.length + 4, 0x01, name.length, ...name, 0x00, 0x00, // export it as func 0
    0x0a, 0x06, 0x01, 0x04, 0x00, 0x41, 0x02, 0x0b, // code: i32.const 2
  ]);
}

describe('bad modules: each refused with an error naming it, and the node keeps serving', () => {
  let node;
  let dir;
  before(async () => {
    dir = modulesDir({ moderation: 'words = ["badword"]\n' });
    writeFileSync(path.join(dir, 'notwasm.wasm'), 'this is a text file, not WebAssembly\n');
    writeFileSync(path.join(dir, 'abitwo.wasm'), abiTwoModule());
    install(dir, 'panics', 'mode = "panic_on_init"\n', BUILT.faulty);
    install(dir, 'badsettings', 'words = ["two words"]\n', BUILT.moderation);
    install(dir, 'loops', 'mode = "loop_on_chat"\n', BUILT.faulty);
    install(dir, 'traps', 'mode = "trap_on_chat"\n', BUILT.faulty);
    install(dir, 'garbage', 'mode = "garbage_on_chat"\n', BUILT.faulty);
    node = await startNode({
      CHORUS_MODULES_DIR: dir,
      CHORUS_MODULES_TIMEOUT_MS: '3000',
      CHORUS_MODULES_FUEL_PER_MESSAGE: '20000000',
      CHORUS_MODULES_CRASH_LIMIT: '3',
    });
  });
  after(async () => {
    await closeAll();
    await node?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('at load: not WebAssembly, wrong ABI version, trap in init, bad settings', async () => {
    const report = await modulesReport(node);
    const failed = (name) => {
      const m = statusOf(report, name);
      assert.equal(m?.status, 'failed', JSON.stringify(m));
      return m.error;
    };
    assert.match(failed('notwasm'), /not a valid WebAssembly module/);
    assert.match(failed('abitwo'), /speaks module ABI version 2; this node speaks version 1/);
    assert.match(failed('panics'), /trapped in chorus_handle.*stderr: .*faulty: panicking in init as asked/s);
    assert.match(failed('badsettings'), /refused its settings: words: "two words" is not one word/);
    for (const name of ['notwasm', 'abitwo', 'panics', 'badsettings']) {
      assert.match(node.logs(), new RegExp(`module ${name} \\(`), `the log names ${name}`);
    }
    assert.deepEqual(report.ready, ['garbage', 'loops', 'moderation', 'traps']);
  });

  test('on chat: a loop runs out of fuel, a trap crashes, garbage is refused; the rest still screens', async () => {
    const topic = `room:${uid('b')}:chat`;
    const { sender, receiver } = await pair(node, '2.0.0', topic);
    const crashes = await metric(node, 'chorus_module_crashes_total');
    const errors = await metric(node, 'chorus_module_errors_total');
    const restarts = await metric(node, 'chorus_restarts_total');
    for (const text of ['loop', 'trap', 'garbage', 'badword']) {
      assert.equal(await sender.send({ type: 'broadcast', event: 'msg', payload: { text } }), 'ok', text);
    }
    await waitFor(() => receiver.got.length === 4, 10000, 'four messages');
    // Fail open: the misbehaving module gives no verdict on its message; every
    // other module still acts (faulty ones add `faulty: true`, moderation masks).
    const got = receiver.got.map((m) => m.payload);
    assert.equal(got[3].text, '*******');
    assert.equal(got[3].faulty, true);
    assert.equal(got[0].text, 'loop');
    assert.equal(await metric(node, 'chorus_module_crashes_total'), crashes + 2);
    assert.equal(await metric(node, 'chorus_module_errors_total'), errors + 1);
    await waitFor(async () => (await metric(node, 'chorus_restarts_total')) >= restarts + 2, 5000, 'two restarts');
    const logs = node.logs();
    assert.match(logs, /module loops crashed: ran out of fuel in chorus_handle: more than modules.fuel_per_message \(20000000\)/);
    assert.match(logs, /module traps crashed: trapped in chorus_handle: .*stderr: .*faulty: trapping on a chat message as asked/s);
    assert.match(logs, /module garbage answered ".*this is not JSON" which is not JSON/);
  });

  test('a module that keeps crashing is disabled until the next reload', async () => {
    const topic = `realtime:room:${uid('x')}:chat`;
    const raw = await rawSender(node, '2.0.0', topic, 'eve');
    for (let i = 0; i < 3; i++) {
      assert.equal((await raw.send('msg', { text: 'trap' })).status, 'ok');
    }
    await waitFor(async () => statusOf(await modulesReport(node), 'traps').status === 'disabled', 10000, 'traps disabled');
    const report = await modulesReport(node);
    assert.match(statusOf(report, 'traps').error, /crashed 3 times within 10 s \(modules.crash_limit\)/);
    assert.ok(!report.ready.includes('traps'));
    // The node keeps serving, the other modules keep screening.
    assert.deepEqual(await raw.send('msg', { text: 'badword' }), { status: 'ok', response: {} });
    // A reload gives it another chance.
    assert.equal(statusOf(await modulesReport(node, 'POST'), 'traps').status, 'ready');
  });
});

describe('modules config', () => {
  test('a module listed in modules.enabled that did not load: fail closed refuses chat naming it', async () => {
    const node = await startNode({
      CHORUS_MODULES_DIR: modulesDir(),
      CHORUS_MODULES_ENABLED: 'moderation',
      CHORUS_MODULES_FAIL_OPEN: 'false',
    });
    try {
      const raw = await rawSender(node, '2.0.0', `realtime:room:${uid('e')}:chat`);
      assert.deepEqual(await raw.send('msg', { text: 'hi' }), {
        status: 'error',
        response: { reason: 'module moderation unavailable' },
      });
      assert.match(node.logs(), /modules.enabled lists "moderation", which is not loaded/);
    } finally {
      await closeAll();
      await node.stop();
    }
  });

  test('a module name that cannot be a file name stops the node, naming modules.enabled', async () => {
    await assert.rejects(startNode({ CHORUS_MODULES_ENABLED: 'moderation,No Such' }), (e) => {
      assert.match(e.message, /node exited early/);
      assert.match(e.message, /modules\.enabled/);
      assert.match(e.message, /No Such/);
      return true;
    });
  });
});
