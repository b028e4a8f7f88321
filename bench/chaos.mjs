// Chaos under load, full size (issue 11, item 9): see tests/node/lib/chaos.mjs.
//
//   node bench/chaos.mjs [--clients 1000] [--rooms 100] [--channel-kills 20]
//                        [--presence-kills 10] [--send-interval-ms 1000]
//
// Needs the built node (scripts/run.sh or build_all) and tests/node's npm
// packages (`cd tests/node && npm ci`). Writes bench/results/chaos-<time>.json
// and prints the recovery quantiles; exits 1 if an acked message was lost or
// a client did not get back into its room.

import { execSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { runChaos } from '../tests/node/lib/chaos.mjs';

const args = process.argv.slice(2);
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
console.log(`[chaos] results: ${path.relative(process.cwd(), out)}`);
console.log(`[chaos] acked ${result.acked}, lost ${result.lost}, clients back ${result.clients_joined_at_end}/${result.clients}`);
for (const [kind, s] of Object.entries(result.recovery)) {
  console.log(`[chaos] ${kind}: n=${s.count} p50=${s.p50_ms} ms p99=${s.p99_ms} ms max=${s.max_ms} ms`);
}
process.exit(result.lost === 0 && result.clients_joined_at_end === result.clients ? 0 : 1);
