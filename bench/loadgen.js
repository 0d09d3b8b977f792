// The load generator of bench/ scenarios that wrk cannot do: MCP Streamable
// HTTP requests on one session, closed or open loop, every answer checked.
// Node built-ins only; a hand-rolled HTTP/1.1 client over `net`, because
// node:http costs more CPU per request than the systems it measures.
//
// Closed loop (--mode closed): C keep-alive connections, each sending its next
// request when the last answer arrived. Latency is from send to answer.
//
// Open loop (--mode open, the wrk2 method): request i is due at
// start + i / R. A due request goes out on an idle connection (of up to C),
// or waits in a queue until one is free. Its latency is measured from its
// INTENDED send time, so when the system stalls, the requests it delays show
// the stall as latency instead of not being sent (no coordinated omission).
// `send_lag` reports how late requests left against the schedule: the part
// of the latency spent queued here, waiting for a free connection (or, if it
// is large at low rates, the load generator's own lateness).
//
// Every answer must be HTTP 200 with a JSON body or an SSE stream holding the
// JSON-RPC reply to the request's id (ids are unique: a counter). For
// tools/call the reply must be the echo of --message; for tools/list it must
// list --expect-tools tools (when given). Anything else is an error, counted
// by kind.
//
// The measured window starts after --warmup seconds (requests due or sent
// before it are not recorded) and lasts --duration seconds. After it, the
// requests still due or in flight are waited for (up to --timeout) and
// recorded; those that do not finish count as `timeout`.
//
// Prints one JSON line: requests, errors (by kind), duration, req/s,
// latency percentiles (exact, from all samples), the load generator's CPU.
//
// Usage: node loadgen.js --url http://127.0.0.1:PORT/mcp --session ID
//   [--protocol-version V] [--method tools/call|tools/list] [--tool echo]
//   [--message bench-echo] [--expect-tools N] [--authorization VALUE]
//   [--mode closed|open] [--connections C] [--rate R] [--duration S]
//   [--warmup S] [--timeout S]
'use strict';

const net = require('node:net');
const { performance } = require('node:perf_hooks');

function parseArgs(argv) {
  const args = {
    url: null,
    session: null,
    'protocol-version': '2025-11-25',
    method: 'tools/call',
    tool: 'echo',
    message: 'bench-echo',
    'expect-tools': null,
    authorization: null,
    mode: 'closed',
    connections: 1,
    rate: 0,
    duration: 10,
    warmup: 1,
    timeout: 10,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in args) || i + 1 >= argv.length) usage(`bad argument ${argv[i]}`);
    args[key] = argv[i + 1];
  }
  if (!args.url || !args.session) usage('--url and --session are required');
  for (const key of ['connections', 'rate', 'duration', 'warmup', 'timeout']) {
    args[key] = Number(args[key]);
    if (!Number.isFinite(args[key]) || args[key] < 0) usage(`--${key} must be a number`);
  }
  if (args['expect-tools'] !== null) args['expect-tools'] = Number(args['expect-tools']);
  if (args.mode !== 'closed' && args.mode !== 'open') usage('--mode is closed or open');
  if (args.mode === 'open' && !(args.rate > 0)) usage('--mode open needs --rate');
  if (!(args.connections >= 1)) usage('--connections must be at least 1');
  return args;
}

function usage(why) {
  console.error(`loadgen.js: ${why}`);
  process.exit(2);
}

const args = parseArgs(process.argv.slice(2));
const target = new URL(args.url);
const HOST = target.hostname;
const PORT = Number(target.port || 80);
const PATH = target.pathname + target.search;
const TIMEOUT_MS = args.timeout * 1000;

let headerText =
  `POST ${PATH} HTTP/1.1\r\nHost: ${target.host}\r\n` +
  'Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n' +
  `Mcp-Session-Id: ${args.session}\r\nMCP-Protocol-Version: ${args['protocol-version']}\r\n`;
if (args.authorization) headerText += `Authorization: ${args.authorization}\r\n`;

const params =
  args.method === 'tools/call'
    ? JSON.stringify({ name: args.tool, arguments: { message: args.message } })
    : '{}';
const bodyTail = `,"method":"${args.method}","params":${params}}`;

let nextId = 1;
function requestBytes(id) {
  const body = `{"jsonrpc":"2.0","id":${id}${bodyTail}`;
  return `${headerText}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

// ------------------------------------------------------------ checking answers

function checkReply(reply, id) {
  if (reply === null || typeof reply !== 'object' || reply.id !== id) return 'wrong_id';
  if (reply.error !== undefined) return 'jsonrpc_error';
  const result = reply.result;
  if (result === null || typeof result !== 'object') return 'no_result';
  if (args.method === 'tools/call') {
    const content = result.content;
    if (
      result.isError ||
      !Array.isArray(content) ||
      content.length !== 1 ||
      content[0].text !== args.message
    ) {
      return 'not_echo';
    }
  } else if (args.method === 'tools/list') {
    if (!Array.isArray(result.tools)) return 'no_tools';
    if (args['expect-tools'] !== null && result.tools.length !== args['expect-tools']) {
      return 'wrong_tool_count';
    }
  }
  return null;
}

// The JSON-RPC reply to `id` in an SSE body: the event whose data has that id.
function replyFromSse(text, id) {
  for (const block of text.replace(/\r\n/g, '\n').split('\n\n')) {
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('data:')) data.push(line.slice(line[5] === ' ' ? 6 : 5));
    }
    if (data.length === 0) continue;
    let message;
    try {
      message = JSON.parse(data.join('\n'));
    } catch {
      return undefined;
    }
    if (message && message.id === id) return message;
  }
  return undefined;
}

function checkAnswer(status, contentType, body, id) {
  if (status !== 200) return `http_${status}`;
  const text = body.toString('utf8');
  let reply;
  if (contentType.startsWith('application/json')) {
    try {
      reply = JSON.parse(text);
    } catch {
      return 'bad_json';
    }
  } else if (contentType.startsWith('text/event-stream')) {
    reply = replyFromSse(text, id);
    if (reply === undefined) return 'no_sse_reply';
  } else {
    return 'bad_content_type';
  }
  return checkReply(reply, id);
}

// ------------------------------------------------------------ statistics

class Samples {
  constructor() {
    this.values = new Float64Array(1 << 16);
    this.length = 0;
  }

  add(value) {
    if (this.length === this.values.length) {
      const grown = new Float64Array(this.values.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.length++] = value;
  }

  summary() {
    const sorted = this.values.slice(0, this.length).sort();
    const at = (q) =>
      sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : null;
    let sum = 0;
    for (const v of sorted) sum += v;
    return {
      p50: at(0.5),
      p90: at(0.9),
      p99: at(0.99),
      p999: at(0.999),
      max: sorted.length ? sorted[sorted.length - 1] : null,
      mean: sorted.length ? sum / sorted.length : null,
    };
  }
}

const latency = new Samples(); // ms
const sendLag = new Samples(); // ms, open loop only
const errors = {};
let completed = 0;
let measuring = false; // recording, from warm-up's end
let measureStart = 0;

function record(job, now, error) {
  if (!measuring || job.intended < measureStart) return;
  if (error) {
    errors[error] = (errors[error] ?? 0) + 1;
    return;
  }
  completed += 1;
  latency.add(now - job.intended);
  if (args.mode === 'open') sendLag.add(job.sent - job.intended);
}

// ------------------------------------------------------------ connections

const CRLF2 = Buffer.from('\r\n\r\n');

class Connection {
  constructor(onIdle) {
    this.onIdle = onIdle;
    this.job = null; // the request in flight
    this.socket = null;
    this.ready = false;
    this.connect();
  }

  connect() {
    this.ready = false;
    this.buf = null;
    this.resetResponse();
    const socket = net.connect(PORT, HOST);
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('connect', () => {
      this.ready = true;
      this.onIdle(this);
    });
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('error', () => {});
    socket.on('close', () => this.onClose(socket));
  }

  resetResponse() {
    this.head = null; // {status, contentType, length, chunked, close}
    this.bodyParts = [];
    this.bodyLength = 0;
    this.chunkLeft = -1; // chunked: bytes left in the current chunk, -1 between chunks
  }

  send(job) {
    this.job = job;
    job.sent = performance.now();
    this.socket.write(requestBytes(job.id), 'latin1');
  }

  finish(error) {
    const job = this.job;
    if (!job) return;
    this.job = null;
    record(job, performance.now(), error);
  }

  onClose(socket) {
    if (socket !== this.socket) return;
    if (this.job) this.finish(this.ready ? 'socket_closed' : 'connect_failed');
    if (stopping) return;
    // Reconnect, a little later when the connect itself failed.
    setTimeout(() => this.connect(), this.ready ? 0 : 100);
  }

  abort(error) {
    this.finish(error);
    const socket = this.socket;
    this.socket = null;
    socket.destroy();
    if (!stopping) this.connect();
  }

  onData(chunk) {
    this.buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
    while (this.buf && this.buf.length) {
      if (!this.job) {
        this.abort('unsolicited_data');
        return;
      }
      if (!this.head && !this.parseHead()) return;
      if (!this.parseBody()) return;
      const { status, contentType, close } = this.head;
      const body =
        this.bodyParts.length === 1 ? this.bodyParts[0] : Buffer.concat(this.bodyParts);
      const error = checkAnswer(status, contentType, body, this.job.id);
      this.resetResponse();
      if (close) {
        this.abort(error); // the server closes: no keep-alive
        return;
      }
      this.finish(error);
      this.onIdle(this);
    }
  }

  parseHead() {
    const end = this.buf.indexOf(CRLF2);
    if (end < 0) {
      if (this.buf.length > 65536) this.abort('bad_head');
      return false;
    }
    const lines = this.buf.toString('latin1', 0, end).split('\r\n');
    const status = Number(lines[0].split(' ', 3)[1]);
    const head = { status, contentType: '', length: -1, chunked: false, close: false };
    for (let i = 1; i < lines.length; i++) {
      const colon = lines[i].indexOf(':');
      const name = lines[i].slice(0, colon).trim().toLowerCase();
      const value = lines[i].slice(colon + 1).trim();
      if (name === 'content-length') head.length = Number(value);
      else if (name === 'content-type') head.contentType = value.toLowerCase();
      else if (name === 'transfer-encoding') head.chunked = value.toLowerCase().includes('chunked');
      else if (name === 'connection') head.close = value.toLowerCase() === 'close';
    }
    if (!head.chunked && head.length < 0) head.close = true; // body until close
    this.head = head;
    this.buf = this.buf.length > end + 4 ? this.buf.subarray(end + 4) : null;
    return true;
  }

  // True once the whole body is in bodyParts.
  parseBody() {
    const head = this.head;
    if (!head.chunked) {
      if (head.length < 0) {
        // Until close: not supported on a keep-alive load; count it.
        this.abort('no_length');
        return false;
      }
      const need = head.length - this.bodyLength;
      if (!this.buf) return need === 0;
      const take = Math.min(need, this.buf.length);
      this.bodyParts.push(this.buf.subarray(0, take));
      this.bodyLength += take;
      this.buf = this.buf.length > take ? this.buf.subarray(take) : null;
      return this.bodyLength === head.length;
    }
    while (this.buf) {
      if (this.chunkLeft < 0) {
        const eol = this.buf.indexOf('\r\n');
        if (eol < 0) return false;
        const size = Number.parseInt(this.buf.toString('latin1', 0, eol), 16);
        if (size === 0) {
          // The last chunk, then no trailers: CRLF.
          if (this.buf.length < eol + 4) return false;
          this.buf = this.buf.length > eol + 4 ? this.buf.subarray(eol + 4) : null;
          return true;
        }
        this.chunkLeft = size;
        this.buf = this.buf.length > eol + 2 ? this.buf.subarray(eol + 2) : null;
        continue;
      }
      if (this.chunkLeft > 0) {
        const take = Math.min(this.chunkLeft, this.buf.length);
        this.bodyParts.push(this.buf.subarray(0, take));
        this.chunkLeft -= take;
        this.buf = this.buf.length > take ? this.buf.subarray(take) : null;
        continue;
      }
      // The CRLF after a chunk's data.
      if (this.buf.length < 2) return false;
      this.chunkLeft = -1;
      this.buf = this.buf.length > 2 ? this.buf.subarray(2) : null;
    }
    return false;
  }
}

// ------------------------------------------------------------ the two loops

let stopping = false;
const connections = [];
const idle = []; // open loop: connections with nothing in flight
const queue = []; // open loop: due requests waiting for a connection
let queueHead = 0;
let scheduled = 0; // open loop: requests made due so far
let startTime = 0;
let endTime = 0; // of the measured window
let lastDue = Number.POSITIVE_INFINITY; // open loop: no request is due at or after this

function newJob(intended) {
  return { id: nextId++, intended, sent: 0 };
}

function onIdleClosed(conn) {
  if (stopping || performance.now() >= endTime) return;
  conn.send(newJob(performance.now()));
}

function onIdleOpen(conn) {
  if (queueHead < queue.length) {
    const job = queue[queueHead];
    queue[queueHead++] = undefined;
    if (queueHead > 4096 && queueHead * 2 > queue.length) {
      queue.splice(0, queueHead);
      queueHead = 0;
    }
    conn.send(job);
  } else if (!stopping) {
    idle.push(conn);
  }
}

// Makes every request due by now, sends what it can, and sleeps until the next.
function tick() {
  if (stopping) return;
  const now = performance.now();
  const interval = 1000 / args.rate;
  while (true) {
    const due = startTime + scheduled * interval;
    if (due > now || due >= lastDue) break;
    scheduled += 1;
    const job = newJob(due);
    const conn = idle.pop();
    if (conn && conn.ready && conn.job === null) conn.send(job);
    else queue.push(job);
  }
  const next = startTime + scheduled * interval;
  if (next >= lastDue) return;
  const wait = next - performance.now();
  // Timers are late by a millisecond or so: sleep short of the due time and
  // poll the rest, so the schedule (and the latency) is kept to microseconds.
  if (wait > 2) setTimeout(tick, wait - 1.5);
  else setImmediate(tick);
}

function inFlight() {
  let n = queue.length - queueHead;
  for (const conn of connections) if (conn.job) n += 1;
  return n;
}

function watchTimeouts() {
  const now = performance.now();
  for (const conn of connections) {
    if (conn.job && conn.job.sent && now - conn.job.sent > TIMEOUT_MS) conn.abort('timeout');
  }
}

async function main() {
  const cpuBefore = process.cpuUsage();
  const onIdle = args.mode === 'closed' ? onIdleClosed : onIdleOpen;
  startTime = performance.now();
  measureStart = startTime + args.warmup * 1000;
  endTime = measureStart + args.duration * 1000;
  if (args.mode === 'open') lastDue = endTime;
  for (let i = 0; i < args.connections; i++) connections.push(new Connection(onIdle));
  if (args.mode === 'open') tick();
  const timeouts = setInterval(watchTimeouts, 100);
  await sleep(measureStart - performance.now());
  measuring = true;
  const cpuMeasured = process.cpuUsage();
  await sleep(endTime - performance.now());
  // The requests due in the window and not answered yet are part of it.
  const drainDeadline = performance.now() + TIMEOUT_MS;
  while (inFlight() > 0 && performance.now() < drainDeadline) await sleep(5);
  const cpu = process.cpuUsage(cpuMeasured);
  stopping = true;
  clearInterval(timeouts);
  for (let i = queueHead; i < queue.length; i++) record(queue[i], 0, 'timeout');
  for (const conn of connections) {
    if (conn.job) conn.finish('timeout');
    conn.socket?.destroy();
  }
  const wall = (performance.now() - measureStart) / 1000;
  let errorTotal = 0;
  for (const n of Object.values(errors)) errorTotal += n;
  const summary = {
    mode: args.mode,
    method: args.method,
    connections: args.connections,
    rate: args.mode === 'open' ? args.rate : null,
    duration_s: args.duration,
    wall_s: wall,
    requests: completed,
    errors: errorTotal,
    errors_by_kind: errors,
    requests_per_s: completed / args.duration,
    latency_ms: latency.summary(),
    send_lag_ms: args.mode === 'open' ? sendLag.summary() : null,
    cpu_s: (cpu.user + cpu.system) / 1e6,
    cpu_s_total: (() => {
      const all = process.cpuUsage(cpuBefore);
      return (all.user + all.system) / 1e6;
    })(),
  };
  process.stdout.write(`${JSON.stringify(summary)}\n`);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
