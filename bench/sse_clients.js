// Many MCP sessions, each with its server-to-client stream open: the client
// side of bench/ scenarios `sse-fanout` and `idle-sse`. Node built-ins only.
//
// It opens --sessions sessions on --url, --parallel at a time: `initialize`,
// `notifications/initialized` (on a small keep-alive pool), then a GET of the
// URL with `Accept: text/event-stream` on a connection of its own, kept open.
// Then it prints {"event":"opened", ...} and obeys commands, one per line on
// stdin, each answered by one JSON line on stdout:
//
//   wait-upstream N S   poll --admin/admin/stats until the upstream holds N
//                       streams (at most S seconds); says how many it saw
//   fanout K R S        note t0, POST --admin/admin/broadcast?count=K&rate=R,
//                       and wait (at most S seconds after the schedule's end)
//                       for K events on every stream; reports time to first
//                       event from t0 per session, delivery latency (arrival
//                       minus the upstream's write time in the event), events
//                       lost, duplicated or out of order
//   stats               streams open, ended cleanly, failed; comments and
//                       events received; when the last stream closed
//   quit                exit
//
// Usage: node sse_clients.js --url http://127.0.0.1:PORT/mcp --sessions N
//          [--parallel P] [--admin http://127.0.0.1:UPSTREAM_PORT]
'use strict';

const http = require('node:http');
const readline = require('node:readline');

const args = { url: null, sessions: 100, parallel: 32, admin: null };
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, '');
  if (!(key in args)) fail(`bad argument ${process.argv[i]}`);
  args[key] = process.argv[i + 1];
}
if (!args.url) fail('--url is required');
args.sessions = Number(args.sessions);
args.parallel = Number(args.parallel);

function fail(why) {
  console.error(`sse_clients.js: ${why}`);
  process.exit(2);
}

const now = () => performance.timeOrigin + performance.now(); // ms since the epoch
const target = new URL(args.url);
const PROTOCOL = '2025-11-25';
const postAgent = new http.Agent({ keepAlive: true, maxSockets: args.parallel });
const streamAgent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

function out(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

function post(headers, message) {
  const body = JSON.stringify(message);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: target.hostname,
        port: target.port,
        path: target.pathname,
        method: 'POST',
        agent: postAgent,
        headers: {
          'Content-Type': 'application/json',
          Accept: 'application/json, text/event-stream',
          'Content-Length': Buffer.byteLength(body),
          ...headers,
        },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      },
    );
    req.setTimeout(30_000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

// ------------------------------------------------------------ the streams

const streams = [];
const failures = {};
const failureSamples = {}; // the first answer of each kind of failure, for the report
let comments = 0;
let events = 0;
let lastClose = null;
let fanout = null; // the fanout in progress

function countFailure(kind) {
  failures[kind] = (failures[kind] ?? 0) + 1;
}

class Stream {
  constructor(sid) {
    this.sid = sid;
    this.state = 'opening'; // open, ended (cleanly), failed
    this.pending = '';
    this.first = null; // arrival of the first event of the fanout
    this.received = 0;
    this.nextSeq = 0;
    this.lost = 0; // skipped sequence numbers
    this.disorder = 0; // duplicates and events out of order
  }

  open() {
    return new Promise((resolve) => {
      const req = http.request({
        host: target.hostname,
        port: target.port,
        path: target.pathname,
        method: 'GET',
        agent: streamAgent,
        headers: {
          Accept: 'text/event-stream',
          'Mcp-Session-Id': this.sid,
          'MCP-Protocol-Version': PROTOCOL,
        },
      });
      req.on('response', (res) => {
        const type = String(res.headers['content-type'] ?? '');
        if (res.statusCode !== 200 || !type.startsWith('text/event-stream')) {
          res.resume();
          this.state = 'failed';
          resolve(`get_http_${res.statusCode}`);
          return;
        }
        this.state = 'open';
        res.setEncoding('utf8');
        res.on('data', (text) => this.onText(text));
        res.on('end', () => this.close('ended'));
        res.on('error', () => this.close('failed'));
        res.on('close', () => this.close('failed'));
        resolve(null);
      });
      req.on('error', () => {
        if (this.state === 'opening') {
          this.state = 'failed';
          resolve('get_socket_error');
        } else {
          this.close('failed');
        }
      });
      req.end();
    });
  }

  close(how) {
    if (this.state !== 'open') return;
    this.state = how;
    lastClose = now();
  }

  onText(text) {
    this.pending += text;
    let end = this.pending.indexOf('\n\n');
    while (end >= 0) {
      const block = this.pending.slice(0, end);
      this.pending = this.pending.slice(end + 2);
      this.onBlock(block);
      end = this.pending.indexOf('\n\n');
    }
  }

  onBlock(block) {
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments += 1;
      else if (line.startsWith('data:')) data.push(line.slice(line[5] === ' ' ? 6 : 5));
    }
    // No data, or an empty one: a priming event (SEP-1699: an id to resume
    // from), not a message.
    if (data.length === 0 || data.join('\n').trim() === '') return;
    events += 1;
    let message;
    try {
      message = JSON.parse(data.join('\n'));
    } catch {
      countFailure('bad_event_json');
      return;
    }
    const info = message?.params?.data;
    if (message.method !== 'notifications/message' || typeof info?.seq !== 'number') return;
    const arrived = now();
    if (fanout) fanout.latency.push(arrived - info.t);
    if (this.first === null) this.first = arrived;
    this.received += 1;
    if (info.seq === this.nextSeq) this.nextSeq += 1;
    else if (info.seq > this.nextSeq) {
      this.lost += info.seq - this.nextSeq;
      this.nextSeq = info.seq + 1;
    } else this.disorder += 1;
    if (fanout) fanout.received += 1;
  }
}

async function openAll() {
  const started = now();
  let next = 0;
  const worker = async () => {
    while (next < args.sessions) {
      next += 1;
      const failure = await openOne().catch((err) => `socket_${err.code ?? err.message}`);
      if (failure) countFailure(failure);
    }
  };
  await Promise.all(Array.from({ length: Math.min(args.parallel, args.sessions) }, worker));
  const open = streams.filter((s) => s.state === 'open').length;
  const openS = (now() - started) / 1000;
  out({ event: 'opened', open, failures, failure_samples: failureSamples, open_s: openS });
}

async function openOne() {
  const init = await post(
    {},
    {
      jsonrpc: '2.0',
      id: 1,
      method: 'initialize',
      params: {
        protocolVersion: PROTOCOL,
        capabilities: {},
        clientInfo: { name: 'agentgw-bench-sse', version: '1' },
      },
    },
  );
  const sid = init.headers['mcp-session-id'];
  const kind = init.status !== 200 ? `initialize_http_${init.status}` : 'initialize_no_session';
  if (init.status !== 200 || !sid) {
    failureSamples[kind] ??= `HTTP ${init.status}: ${init.body.toString('utf8').slice(0, 300)}`;
    return kind;
  }
  const headers = { 'Mcp-Session-Id': sid, 'MCP-Protocol-Version': PROTOCOL };
  const note = await post(headers, { jsonrpc: '2.0', method: 'notifications/initialized' });
  if (note.status !== 202) return `initialized_http_${note.status}`;
  const stream = new Stream(sid);
  streams.push(stream);
  return stream.open();
}

// ------------------------------------------------------------ commands

function adminRequest(method, path) {
  const url = new URL(path, args.admin);
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('error', reject);
    req.end();
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitUpstream(wanted, seconds) {
  const deadline = now() + seconds * 1000;
  let stats = await adminRequest('GET', '/admin/stats');
  while (stats.streams < wanted && now() < deadline) {
    await sleep(100);
    stats = await adminRequest('GET', '/admin/stats');
  }
  out({ event: 'upstream', ...stats });
}

function percentiles(values) {
  const sorted = Float64Array.from(values).sort();
  const at = (q) =>
    sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : null;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted.at(-1) ?? null };
}

async function runFanout(count, rate, graceS) {
  const open = streams.filter((s) => s.state === 'open');
  for (const s of streams) {
    s.first = null;
    s.received = 0;
    s.nextSeq = 0;
    s.lost = 0;
    s.disorder = 0;
  }
  const expected = open.length * count;
  fanout = { received: 0, latency: [] };
  const t0 = now();
  const answer = await adminRequest('POST', `/admin/broadcast?count=${count}&rate=${rate}`);
  const scheduleS = (open.length * (count - 1)) / rate;
  const deadline = t0 + (scheduleS + graceS) * 1000;
  while (fanout.received < expected && now() < deadline) await sleep(5);
  const done = now();
  let last = 0;
  let lost = 0;
  let disorder = 0;
  for (const s of open) {
    lost += s.lost + (count - s.nextSeq > 0 ? count - s.nextSeq : 0);
    disorder += s.disorder;
  }
  const ttfe = open.filter((s) => s.first !== null).map((s) => s.first - t0);
  for (const s of open) if (s.first !== null) last = Math.max(last, s.first);
  const result = {
    event: 'fanout',
    streams: open.length,
    upstream_streams: answer.streams,
    count,
    rate,
    expected,
    received: fanout.received,
    lost,
    disorder,
    without_first_event: open.length - ttfe.length,
    schedule_s: scheduleS,
    elapsed_s: (done - t0) / 1000,
    ttfe_ms: percentiles(ttfe),
    latency_ms: percentiles(fanout.latency),
  };
  fanout = null;
  out(result);
}

function stats() {
  const by = { opening: 0, open: 0, ended: 0, failed: 0 };
  for (const s of streams) by[s.state] += 1;
  out({ event: 'stats', ...by, comments, events, last_close: lastClose, now: now() });
}

async function main() {
  await openAll();
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const [command, ...rest] = line.trim().split(/\s+/);
    const n = rest.map(Number);
    if (command === 'wait-upstream') await waitUpstream(n[0], n[1]);
    else if (command === 'fanout') await runFanout(n[0], n[1], n[2]);
    else if (command === 'stats') stats();
    else if (command === 'quit') break;
    else out({ event: 'error', message: `unknown command ${command}` });
  }
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
