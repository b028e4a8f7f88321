// The WhatsSound demo room: a generated track the host plays and every
// listener hears in sync, chat with history, reactions with counts, and the
// presence of the users on screen, all through chorus-kit on realtime-js.
//
// The track is made here with WebAudio: a click every beat (BEAT_MS), a
// higher tone on the first beat of each bar. Every page computes the track
// position from the host's `playback` state and the node's clock, and
// schedules each beat at the wall-clock instant that position says, so two
// windows click together.

import { RealtimeClient } from '@supabase/realtime-js';
import { PushError, Room, type ChatMessage, type PlaybackInput } from 'chorus-kit';

const TRACK = 'whatssound:demo-clicks';
const BEAT_MS = 500;
const BEATS_PER_BAR = 4;
/** How far ahead beats are scheduled (ms of track). */
const LOOKAHEAD_MS = 250;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
const apikey = params.get('apikey') ?? 'anon';

/** Beats scheduled to sound, by beat index: the wall-clock ms (Date.now) it sounds at. */
const beatTimes: Record<number, number> = {};

/** The click track: schedules beats on an AudioContext once sound is on. */
class Clicks {
  private ctx: AudioContext | null = null;
  private scheduled = new Map<number, OscillatorNode | null>();

  enableSound(): void {
    if (!this.ctx) this.ctx = new AudioContext();
    void this.ctx.resume();
  }

  get soundOn(): boolean {
    return this.ctx?.state === 'running';
  }

  /** Forgets every beat not yet sounded (the host paused or moved). */
  reset(): void {
    for (const [beat, osc] of this.scheduled) {
      if (beatTimes[beat] > Date.now()) {
        osc?.stop();
        delete beatTimes[beat];
      }
    }
    this.scheduled.clear();
  }

  /** Schedules the beats between `position` and the lookahead (`now`: Date.now at `position`). */
  tick(position: number, now: number): void {
    const first = Math.ceil(position / BEAT_MS);
    const last = Math.floor((position + LOOKAHEAD_MS) / BEAT_MS);
    for (let beat = first; beat <= last; beat++) {
      if (this.scheduled.has(beat)) continue;
      const wallAt = now + (beat * BEAT_MS - position);
      beatTimes[beat] = wallAt;
      this.scheduled.set(beat, this.sound(beat, wallAt));
    }
    for (const beat of this.scheduled.keys()) {
      if (beat < first - 8) this.scheduled.delete(beat);
    }
  }

  private sound(beat: number, wallAt: number): OscillatorNode | null {
    const ctx = this.ctx;
    if (!ctx || ctx.state !== 'running') return null;
    // Map the wall-clock instant onto the audio clock.
    const stamp = ctx.getOutputTimestamp();
    const perfAt = performance.now() + (wallAt - Date.now());
    const at = (stamp.contextTime ?? ctx.currentTime) + (perfAt - (stamp.performanceTime ?? performance.now())) / 1000;
    if (at < ctx.currentTime) return null;
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = beat % BEATS_PER_BAR === 0 ? 1320 : 880;
    gain.gain.setValueAtTime(0.4, at);
    gain.gain.exponentialRampToValueAtTime(0.001, at + 0.06);
    osc.connect(gain).connect(ctx.destination);
    osc.start(at);
    osc.stop(at + 0.07);
    return osc;
  }
}

const fmt = (ms: number) => {
  const s = Math.max(0, ms) / 1000;
  return `${Math.floor(s / 60)}:${(s % 60).toFixed(3).padStart(6, '0')}`;
};

function showMessage(m: ChatMessage): void {
  const li = document.createElement('li');
  if (m.replayed) li.className = 'replayed';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = String(m.payload?.user ?? '?');
  li.append(who, String(m.payload?.text ?? ''));
  $('messages').append(li);
  li.scrollIntoView({ block: 'nearest' });
}

async function start(user: string, roomId: string, hosting: boolean): Promise<void> {
  $('status').textContent = 'joining…';
  if (hosting) {
    const res = await fetch(`/realtime/v1/api/rooms/${encodeURIComponent(roomId)}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', apikey, authorization: `Bearer ${apikey}` },
      body: JSON.stringify({ host: user }),
    });
    if (!res.ok) throw new Error(`cannot become host: HTTP ${res.status}`);
  }
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/realtime/v1`;
  const client = new RealtimeClient(wsUrl, { params: { apikey } });
  const room = new Room(client, { id: roomId, user, history: 50, meta: { name: user, host: hosting } });
  const clicks = new Clicks();
  const messages: ChatMessage[] = [];

  // Who is in the room: the audio lane's presence (small rooms get it
  // whole). The chat lane's presence is then followed only for those users:
  // the ones on screen.
  let watched = new Set<string>();
  const onScreen = async () => {
    const roster = new Set(Object.keys(room.audio.presenceState()));
    const add = [...roster].filter((u) => !watched.has(u));
    const remove = [...watched].filter((u) => !roster.has(u));
    if (add.length === 0 && remove.length === 0) return;
    watched = roster;
    await room.watchPresence(add, remove).catch((e) => console.warn('presence_subscribe', e));
  };
  room.audio.on('presence', { event: 'sync' }, () => void onScreen());

  room.on('presence', (members) => {
    $('count').textContent = `(${members.length})`;
    const ul = $('members');
    ul.replaceChildren(
      ...members
        .sort((a, b) => a.user.localeCompare(b.user))
        .map((m) => {
          const li = document.createElement('li');
          li.textContent = m.user;
          li.dataset.user = m.user;
          if (m.metas.some((meta) => meta.host === true)) {
            const tag = document.createElement('span');
            tag.className = 'host';
            tag.textContent = 'host';
            li.append(tag);
          }
          return li;
        }),
    );
  });
  room.on('chat', (m) => {
    messages.push(m);
    showMessage(m);
  });
  room.on('reactions', () => {
    for (const [emoji, n] of Object.entries(room.reactionCounts())) {
      const span = document.querySelector<HTMLElement>(`[data-count="${emoji}"]`);
      if (span) span.textContent = String(n);
    }
  });
  const showTrack = (state: { track: string; playing: boolean }) => {
    $('track').textContent = `${state.track} ${state.playing ? '' : '(paused)'}`;
  };
  room.on('playback', ({ state }) => {
    clicks.reset();
    showTrack(state);
  });

  await room.join();
  await room.audio.track({ user });
  $('status').textContent = `joined room ${roomId} as ${user}`;
  $('join').hidden = true;
  $('stage').hidden = false;
  $('sync').textContent = `clock: offset ${room.clock.offset.toFixed(1)} ms, round trip ${room.clock.rtt.toFixed(1)} ms`;
  if (hosting) $('host-controls').hidden = false;

  const publish = async (state: PlaybackInput) => {
    try {
      showTrack(await room.publishPlayback(state));
      clicks.reset();
    } catch (e) {
      $('sync').textContent = `playback refused: ${e instanceof PushError ? e.reason : String(e)}`;
    }
  };
  $('play').onclick = () => void publish({ track: TRACK, position_ms: room.position() ?? 0, playing: true });
  $('pause').onclick = () => void publish({ track: TRACK, position_ms: room.position() ?? 0, playing: false });
  $('restart').onclick = () => void publish({ track: TRACK, position_ms: 0, playing: true });
  $('sound').onclick = () => {
    clicks.enableSound();
    $('sound').textContent = '🔊 Sound on';
  };
  $<HTMLFormElement>('say').onsubmit = async (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>('text');
    const text = input.value.trim();
    if (!text) return;
    try {
      await room.say({ text, user });
      input.value = '';
      $('chat-error').textContent = '';
    } catch (e) {
      $('chat-error').textContent = e instanceof PushError ? e.reason : String(e);
    }
  };
  for (const button of document.querySelectorAll<HTMLButtonElement>('[data-emoji]')) {
    button.onclick = () => void room.react(button.dataset.emoji ?? '🔥');
  }

  // The clock drifts: resync now and then (best of 5 round trips).
  setInterval(() => void room.syncClock({ samples: 5 }).catch(() => {}), 30_000);

  const frame = () => {
    const now = Date.now();
    const playing = room.playback?.playing === true;
    const position = room.position();
    if (position !== null) {
      $('position').textContent = fmt(position);
      if (playing) clicks.tick(position, now);
      const beat = Math.floor(position / BEAT_MS);
      const on = playing && position - beat * BEAT_MS < 100;
      $('beat').className = on ? (beat % BEATS_PER_BAR === 0 ? 'bar' : 'on') : '';
    }
    requestAnimationFrame(frame);
  };
  // Beats are scheduled from a timer too: requestAnimationFrame stops in
  // background tabs, and a listener in one should still hear the track.
  setInterval(() => {
    const position = room.position();
    if (position !== null && room.playback?.playing) clicks.tick(position, Date.now());
  }, 50);
  requestAnimationFrame(frame);

  // For tests and the curious: what this page knows.
  Object.assign(window, {
    chorusDemo: {
      room,
      position: () => room.position(),
      beatTimes,
      soundOn: () => clicks.soundOn,
      members: () => room.members().map((m) => m.user).sort(),
      messages: () => messages.map((m) => ({ user: m.payload?.user, text: m.payload?.text, replayed: m.replayed })),
      counts: () => room.reactionCounts(),
    },
  });
}

const form = $<HTMLFormElement>('join');
$<HTMLInputElement>('user').value = params.get('user') ?? '';
$<HTMLInputElement>('room').value = params.get('room') ?? 'demo';
$<HTMLInputElement>('host').checked = params.get('host') === '1';
form.onsubmit = (ev) => {
  ev.preventDefault();
  const user = $<HTMLInputElement>('user').value.trim();
  const roomId = $<HTMLInputElement>('room').value.trim();
  start(user, roomId, $<HTMLInputElement>('host').checked).catch((e) => {
    $('status').textContent = `error: ${e instanceof Error ? e.message : String(e)}`;
  });
};
