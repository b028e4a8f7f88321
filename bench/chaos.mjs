// Chaos under load, full size (issue 11, item 9): see tests/node/lib/chaos.mjs.
//
//   node bench/chaos.mjs [--clients 1000] [--rooms 100] [--channel-kills 20]
//                        [--presence-kills 10] [--send-interval-ms 1000]
//   node bench/chaos.mjs --summarize bench/results/chaos-<time>.json
//
// Needs the built node (scripts/run.sh or build_all) and tests/node's npm
// packages (`cd tests/node && npm ci`). Writes bench/results/chaos-<time>.json
// and its summary chaos-<time>.md (which `chorus-bench report` copies into
// BENCHMARKS.md, newest first), and prints the recovery quantiles; exits 1 if
// an acked message was lost or a client did not get back into its room.
// `--summarize` only rewrites the summary of an existing results file.

import { execSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { runChaos } from '../tests/node/lib/chaos.mjs';

const args = process.argv.slice(2);

const KINDS = {
  channel_kill: 'a channel process killed: its subscribers receive again',
  presence_shard_kill: 'a presence shard killed: "who is online" answers again',
  node_kill_per_client: 'the node SIGKILLed and restarted: each client is joined to its room again',
  node_kill_all_rooms: 'the node SIGKILLed and restarted: every room delivers again (probed)',
};

/** The Markdown summary of one chaos results file (a record as written below). */
function summary(record, file) {
  const o = record.options ?? {};
  const lines = [
    `# Chaos under load (${record.started}, commit ${record.commit ?? 'unknown'})`,
    '',
    `From \`${file}\`. Machine: ${record.machine?.cpus ?? '?'} CPUs, load at the start ${record.machine?.loadavg_at_start ?? 'unknown'}.`,
    `${record.clients} realtime-js clients in ${record.rooms} chat rooms, each sending every ${record.send_interval_ms} ms with \`ack\`;`,
    `${o.channelKills ?? '?'} channel kills, ${o.presenceKills ?? '?'} presence-shard kills${o.nodeKill ? ', then one SIGKILL of the node and a restart' : ''}.`,
    '',
    '| what | value |',
    '|---|---|',
    `| messages acked | ${record.acked} |`,
    `| acked messages missing from history afterwards | **${record.lost}** |`,
    `| sends not acked (refused or timed out during a fault; the client knows) | ${record.sends_not_acked} |`,
    `| clients back in their room at the end | ${record.clients_joined_at_end} of ${record.clients} |`,
    `| node restart (kill to healthy again), ms | ${record.node_restart_ms ?? '—'} |`,
    '',
    '| fault: time until … | n | p50 (ms) | p99 (ms) | max (ms) |',
    '|---|---|---|---|---|',
  ];
  for (const [kind, s] of Object.entries(record.recovery ?? {})) {
    lines.push(`| ${KINDS[kind] ?? kind} | ${s.count} | ${s.p50_ms} | ${s.p99_ms} | ${s.max_ms} |`);
  }
  return `${lines.join('\n')}\n`;
}

const si = args.indexOf('--summarize');
if (si >= 0) {
  const file = args[si + 1];
  const record = JSON.parse(readFileSync(file, 'utf8'));
  const md = file.replace(/\.json$/, '.md');
  writeFileSync(md, summary(record, path.basename(file)));
  console.log(`[chaos] wrote ${md}`);
  process.exit(0);
}
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const options = {
  clients: opt('clients', 1000),
  rooms: opt('rooms', 100),
  channelKills: opt('channel-kills', 20),
  presenceKills: opt('presence-kills', 10),
  nodeKill: true,
  sendIntervalMs: opt('send-interval-ms', 1000),
  log: (line) => console.log(`[chaos] ${line}`),
};
const here = path.dirname(fileURLToPath(import.meta.url));
const load = os.loadavg().map((l) => l.toFixed(2)).join(' ');
const commit = (() => {
  try {
    return execSync('git rev-parse --short HEAD', { cwd: here }).toString().trim();
  } catch {
    return null;
  }
})();
const started = new Date();
const result = await runChaos(options);
const id = started.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
const out = path.join(here, 'results', `chaos-${id}.json`);
mkdirSync(path.dirname(out), { recursive: true });
const record = {
  kind: 'chaos',
  started: started.toISOString(),
  commit,
  machine: { cpus: os.cpus().length, loadavg_at_start: load },
  options: { ...options, log: undefined },
  ...result,
};
writeFileSync(out, `${JSON.stringify(record, null, 2)}\n`);
writeFileSync(out.replace(/\.json$/, '.md'), summary(record, path.basename(out)));
console.log(`[chaos] results: ${path.relative(process.cwd(), out)}`);
console.log(`[chaos] acked ${result.acked}, lost ${result.lost}, clients back ${result.clients_joined_at_end}/${result.clients}`);
for (const [kind, s] of Object.entries(result.recovery)) {
  console.log(`[chaos] ${kind}: n=${s.count} p50=${s.p50_ms} ms p99=${s.p99_ms} ms max=${s.max_ms} ms`);
}
process.exit(result.lost === 0 && result.clients_joined_at_end === result.clients ? 0 : 1);
