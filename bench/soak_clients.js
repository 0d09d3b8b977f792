// The clients of bench/ scenario `soak`: MCP traffic mixed the way a gateway
// meets it over a long time. Node built-ins only.
//
// - Calls: --calls workers in closed loop, each POSTing `tools/call` of echo on
//   one of --sessions shared sessions over a keep-alive pool. Every answer must
//   be a 200 whose JSON-RPC reply (JSON or SSE) echoes the message.
// - Departures: --departures times a second, a call of echo with `delay_ms`
//   --delay-ms on a fresh connection, which the client closes --leave-after-ms
//   after sending: it leaves in the middle of the call.
// - Streams: --streams sessions of their own, each with its GET stream
//   (Accept: text/event-stream) held open, and a call of echo on the session
//   every --probe-s seconds. A stream that ends or fails, or whose call gets a
//   404 or a JSON-RPC error (its session is gone), is opened again on a new
//   session a second later.
//
// A call session that answers 404 (the gateway lost it) or a JSON-RPC error
// (its upstream session expired: the upstream restarted) is replaced by a new
// session, and its old one deleted; a worker whose call failed waits 100 ms
// before its next, as a client would back off.
//
// Prints {"event":"ready", ...} once everything is open, then obeys commands
// on stdin, each answered by one JSON line on stdout:
//   sample   what happened since the last sample: calls answered, calls failed
//            (errors) by kind, latency percentiles of the answered calls,
//            other failures (incidents: sessions, streams, probes) by kind,
//            departures, streams open, reopened, events and comments received
//   stop     stop the load, wait for calls in flight (--timeout at most),
//            close every stream and delete every session; print totals
//
// Usage: node soak_clients.js --url http://127.0.0.1:PORT/mcp [--calls 256]
//   [--sessions 16] [--streams 64] [--departures 10] [--delay-ms 500]
//   [--leave-after-ms 50] [--timeout 10] [--probe-s 5] [--message bench-echo]
'use strict';

const http = require('node:http');
const readline = require('node:readline');

const args = {
  url: null,
  calls: 256,
  sessions: 16,
  streams: 64,
  departures: 10,
  'delay-ms': 500,
  'leave-after-ms': 50,
  timeout: 10,
  'probe-s': 5,
  message: 'bench-echo',
};
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, '');
  if (!(key in args) || i + 1 >= process.argv.length) fail(`bad argument ${process.argv[i]}`);
  const value = process.argv[i + 1];
  args[key] = key === 'url' || key === 'message' ? value : Number(value);
}
if (!args.url) fail('--url is required');

function fail(why) {
  console.error(`soak_clients.js: ${why}`);
  process.exit(2);
}

const target = new URL(args.url);
const PROTOCOL = '2025-11-25';
const TIMEOUT_MS = args.timeout * 1000;
const BACKOFF_MS = 100;
const REOPEN_MS = 1000;
const callAgent = new http.Agent({ keepAlive: true, maxSockets: args.calls });
// Sessions, probes and deletes: enough sockets that they never queue behind each other.
const setupAgent = new http.Agent({ keepAlive: true, maxSockets: args.sessions + args.streams });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let stopping = false;

function out(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

// One request; resolves {status, headers, body} or rejects with an error whose
// `kind` names it (timeout, socket).
function request(method, headers, body, agent) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: target.hostname, port: target.port, path: target.pathname, method, agent, headers },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on('error', (err) => reject(Object.assign(err, { kind: 'socket' })));
      },
    );
    req.setTimeout(TIMEOUT_MS, () =>
      req.destroy(Object.assign(new Error('timeout'), { kind: 'timeout' })),
    );
    req.on('error', (err) => reject(Object.assign(err, { kind: err.kind ?? 'socket' })));
    req.end(body);
  });
}

function post(sid, message, agent) {
  const body = JSON.stringify(message);
  const headers = {
    'Content-Type': 'application/json',
    Accept: 'application/json, text/event-stream',
    'Content-Length': Buffer.byteLength(body),
  };
  if (sid) {
    headers['Mcp-Session-Id'] = sid;
    headers['MCP-Protocol-Version'] = PROTOCOL;
  }
  return request('POST', headers, body, agent);
}

const CLIENT_INFO = { name: 'agentgw-bench-soak', version: '1' };

function failure(kind) {
  return Object.assign(new Error(kind), { kind });
}

async function openSession() {
  const params = { protocolVersion: PROTOCOL, capabilities: {}, clientInfo: CLIENT_INFO };
  const initialize = { jsonrpc: '2.0', id: 0, method: 'initialize', params };
  const init = await post(null, initialize, setupAgent);
  const sid = init.headers['mcp-session-id'];
  if (init.status !== 200) throw failure(`initialize_http_${init.status}`);
  if (!sid) throw failure('initialize_no_session'); // a JSON-RPC error: the upstream is down
  const initialized = { jsonrpc: '2.0', method: 'notifications/initialized' };
  const note = await post(sid, initialized, setupAgent);
  if (note.status !== 202) throw failure(`initialized_http_${note.status}`);
  return sid;
}

function deleteSession(sid) {
  const headers = { 'Mcp-Session-Id': sid, 'MCP-Protocol-Version': PROTOCOL };
  return request('DELETE', headers, undefined, setupAgent).catch(() => {});
}

// The JSON-RPC reply to `id`: the body itself, or the SSE event that holds it.
function replyOf(answer, id) {
  const type = String(answer.headers['content-type'] ?? '');
  const text = answer.body.toString('utf8');
  try {
    if (type.startsWith('application/json')) return JSON.parse(text);
    if (!type.startsWith('text/event-stream')) return undefined;
    for (const block of text.replace(/\r\n/g, '\n').split('\n\n')) {
      const data = block
        .split('\n')
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(line[5] === ' ' ? 6 : 5));
      if (data.length === 0) continue;
      const message = JSON.parse(data.join('\n'));
      if (message && message.id === id) return message;
    }
  } catch {
    return undefined;
  }
  return undefined;
}

// null when the answer is the echo, else the kind of error.
function check(answer, id) {
  if (answer.status !== 200) return `http_${answer.status}`;
  const reply = replyOf(answer, id);
  if (reply === undefined) return 'bad_body';
  if (reply.error !== undefined) return 'jsonrpc_error';
  const content = reply.result?.content;
  if (!Array.isArray(content) || content[0]?.text !== args.message) return 'not_echo';
  return null;
}

// ------------------------------------------------------------ the interval's counts

let interval = newInterval();
const totals = {
  calls: 0,
  errors: {},
  incidents: {},
  departures: 0,
  answered_before_leaving: 0,
  renewals: 0,
  reopened: 0,
  events: 0,
};

function newInterval() {
  return {
    calls: 0,
    latencies: [],
    errors: {},
    incidents: {},
    departures: 0,
    answered_before_leaving: 0,
    renewals: 0,
    reopened: 0,
    events: 0,
    comments: 0,
  };
}

// A call that failed.
function countError(kind) {
  interval.errors[kind] = (interval.errors[kind] ?? 0) + 1;
  totals.errors[kind] = (totals.errors[kind] ?? 0) + 1;
}

// Anything else that failed: opening a session, a stream, a stream's probe.
function countIncident(kind) {
  interval.incidents[kind] = (interval.incidents[kind] ?? 0) + 1;
  totals.incidents[kind] = (totals.incidents[kind] ?? 0) + 1;
}

function percentiles(values) {
  const sorted = Float64Array.from(values).sort();
  const at = (q) =>
    sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : null;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted.at(-1) ?? null };
}

// ------------------------------------------------------------ call sessions

class CallSession {
  constructor() {
    this.sid = null;
    this.renewing = null; // the promise of a renewal in progress
  }

  // Replace the session, once for all the workers that saw it fail.
  renew(failedSid) {
    if (this.sid !== failedSid || stopping) return this.renewing ?? Promise.resolve();
    if (!this.renewing) {
      this.renewing = (async () => {
        const old = this.sid;
        while (!stopping) {
          try {
            this.sid = await openSession();
            break;
          } catch (err) {
            countIncident(`renew_${err.kind ?? 'socket'}`);
            await sleep(BACKOFF_MS * 5);
          }
        }
        interval.renewals += 1;
        totals.renewals += 1;
        if (old) deleteSession(old);
        this.renewing = null;
      })();
    }
    return this.renewing;
  }
}

const callSessions = Array.from({ length: args.sessions }, () => new CallSession());
let nextId = 1;
let inFlight = 0;

async function worker(session) {
  while (!stopping) {
    if (session.renewing) await session.renewing;
    const sid = session.sid;
    const id = nextId++;
    const params = { name: 'echo', arguments: { message: args.message } };
    const call = { jsonrpc: '2.0', id, method: 'tools/call', params };
    const sent = performance.now();
    inFlight += 1;
    let error;
    try {
      error = check(await post(sid, call, callAgent), id);
    } catch (err) {
      error = err.kind ?? 'socket';
    }
    inFlight -= 1;
    if (error === null) {
      interval.calls += 1;
      totals.calls += 1;
      interval.latencies.push(performance.now() - sent);
      continue;
    }
    countError(error);
    if (error === 'http_404' || error === 'jsonrpc_error') await session.renew(sid);
    else await sleep(BACKOFF_MS);
  }
}

// ------------------------------------------------------------ departures

function depart() {
  const session = callSessions[Math.floor(Math.random() * callSessions.length)];
  if (!session.sid || session.renewing) return;
  const body = JSON.stringify({
    jsonrpc: '2.0',
    id: nextId++,
    method: 'tools/call',
    params: { name: 'echo', arguments: { message: args.message, delay_ms: args['delay-ms'] } },
  });
  const req = http.request({
    host: target.hostname,
    port: target.port,
    path: target.pathname,
    method: 'POST',
    agent: false,
    headers: {
      'Content-Type': 'application/json',
      Accept: 'application/json, text/event-stream',
      'Content-Length': Buffer.byteLength(body),
      'Mcp-Session-Id': session.sid,
      'MCP-Protocol-Version': PROTOCOL,
    },
  });
  req.on('error', () => {});
  let answered = false;
  req.on('response', (res) => {
    // Answered before we left (an error, most likely): not a departure mid-call.
    answered = true;
    res.resume();
    interval.answered_before_leaving += 1;
    totals.answered_before_leaving += 1;
  });
  req.end(body, () => {
    setTimeout(() => {
      req.destroy();
      if (answered) return;
      interval.departures += 1;
      totals.departures += 1;
    }, args['leave-after-ms']);
  });
}

// ------------------------------------------------------------ streams

const streams = [];

class Stream {
  constructor() {
    this.sid = null;
    this.req = null;
    this.state = 'closed'; // opening, open, closed
  }

  async open() {
    this.state = 'opening';
    while (!stopping) {
      try {
        this.sid = await openSession();
        break;
      } catch (err) {
        countIncident(`stream_session_${err.kind ?? 'socket'}`);
        await sleep(REOPEN_MS);
      }
    }
    if (stopping) return;
    const req = http.request({
      host: target.hostname,
      port: target.port,
      path: target.pathname,
      method: 'GET',
      agent: false,
      headers: {
        Accept: 'text/event-stream',
        'Mcp-Session-Id': this.sid,
        'MCP-Protocol-Version': PROTOCOL,
      },
    });
    this.req = req;
    const headTimer = setTimeout(() => {
      countIncident('stream_timeout');
      req.destroy();
      this.closed();
    }, TIMEOUT_MS);
    req.on('response', (res) => {
      clearTimeout(headTimer);
      if (res.statusCode !== 200) {
        res.resume();
        countIncident(`stream_http_${res.statusCode}`);
        this.closed();
        return;
      }
      this.state = 'open';
      let pending = '';
      res.setEncoding('utf8');
      res.on('data', (text) => {
        pending += text;
        let end = pending.indexOf('\n\n');
        while (end >= 0) {
          const block = pending.slice(0, end);
          pending = pending.slice(end + 2);
          if (block.startsWith(':')) interval.comments += 1;
          else if (block.includes('data:')) {
            interval.events += 1;
            totals.events += 1;
          }
          end = pending.indexOf('\n\n');
        }
      });
      res.on('end', () => this.closed('stream_ended'));
      res.on('error', () => this.closed('stream_failed'));
      res.on('close', () => this.closed('stream_failed'));
    });
    req.on('error', () => {
      clearTimeout(headTimer);
      this.closed('stream_failed');
    });
    req.end();
  }

  // A call on the stream's session (a gateway may answer a ping itself): a
  // session the gateway or the upstream lost ends the stream.
  async probe() {
    const sid = this.sid;
    if (this.state !== 'open' || !sid) return;
    const id = nextId++;
    const params = { name: 'echo', arguments: { message: args.message } };
    const call = { jsonrpc: '2.0', id, method: 'tools/call', params };
    let kind;
    try {
      kind = check(await post(sid, call, setupAgent), id);
    } catch (err) {
      kind = err.kind ?? 'socket';
    }
    if (kind === null || this.sid !== sid) return;
    countIncident(`probe_${kind}`);
    if (kind === 'http_404' || kind === 'jsonrpc_error') {
      this.req?.destroy();
      this.closed();
    }
  }

  // The stream is gone: count it once, and open another on a new session.
  closed(kind) {
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (kind && !stopping) countIncident(kind);
    const old = this.sid;
    this.sid = null;
    if (old) deleteSession(old);
    if (stopping) return;
    interval.reopened += 1;
    totals.reopened += 1;
    setTimeout(() => this.open(), REOPEN_MS);
  }
}

// ------------------------------------------------------------ commands

function sample() {
  const now = interval;
  interval = newInterval();
  out({
    event: 'sample',
    calls: now.calls,
    errors: now.errors,
    incidents: now.incidents,
    latency_ms: percentiles(now.latencies),
    departures: now.departures,
    answered_before_leaving: now.answered_before_leaving,
    renewals: now.renewals,
    streams_open: streams.filter((s) => s.state === 'open').length,
    streams_reopened: now.reopened,
    events: now.events,
    comments: now.comments,
    in_flight: inFlight,
  });
}

async function stop(workers, timers) {
  stopping = true;
  for (const timer of timers) clearInterval(timer);
  const deadline = performance.now() + TIMEOUT_MS;
  await Promise.race([Promise.all(workers), sleep(Math.max(0, deadline - performance.now()))]);
  for (const s of streams) {
    s.req?.destroy();
    if (s.sid) await deleteSession(s.sid);
  }
  for (const s of callSessions) if (s.sid) await deleteSession(s.sid);
  callAgent.destroy();
  setupAgent.destroy();
  out({ event: 'stopped', ...totals, in_flight: inFlight });
}

async function main() {
  const started = performance.now();
  for (const s of callSessions) s.sid = await openSession();
  for (let i = 0; i < args.streams; i++) streams.push(new Stream());
  await Promise.all(streams.map((s) => s.open()));
  const deadline = performance.now() + 30_000;
  while (streams.some((s) => s.state !== 'open') && performance.now() < deadline) await sleep(50);
  const workers = Array.from({ length: args.calls }, (_, i) =>
    worker(callSessions[i % callSessions.length]),
  );
  const timers = [setInterval(() => streams.forEach((s) => s.probe()), args['probe-s'] * 1000)];
  if (args.departures > 0) timers.push(setInterval(depart, 1000 / args.departures));
  out({
    event: 'ready',
    sessions: callSessions.length,
    streams_open: streams.filter((s) => s.state === 'open').length,
    open_s: (performance.now() - started) / 1000,
  });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const command = line.trim();
    if (command === 'sample') sample();
    else if (command === 'stop') {
      await stop(workers, timers);
      break;
    } else out({ event: 'error', message: `unknown command ${command}` });
  }
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
