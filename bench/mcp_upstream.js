// A minimal MCP server for bench/: Streamable HTTP at /mcp with one tool,
// `echo`, answering every request as application/json (never SSE), keep-alive
// on. Node's built-in http module only. It checks session ids (400 without
// one, 404 for an unknown one) so a gateway that loses them shows up as errors.
// Usage: node mcp_upstream.js PORT
//        node mcp_upstream.js --stdio   (for stdio-only proxies: newline-delimited
//        JSON-RPC on stdin and stdout, the same answers, no session ids)
// Options after PORT:
//   --tools N  list N echo-like tools (echo, echo_001, ...) with realistic
//              input schemas; each answers like echo (scenario tools-list)
//   --sse      GET /mcp opens the session's server stream (else 405), and
//              /admin/stats and POST /admin/broadcast?count=K&rate=R push
//              notifications/message to every open stream (scenarios sse-fanout, soak)
//   --tls-cert FILE --tls-key FILE
//              serve HTTPS (node:https) with this PEM certificate chain and key
//              (scenario mcp, system gateway-1-tls)
// A call of `echo` with `delay_ms` in its arguments is answered that much later
// (60 s at most): a call a client can leave in the middle of (scenario soak).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');

const stdio = process.argv.includes('--stdio');
const port = Number.parseInt(process.argv[2] ?? '', 10);
if (!stdio && (!Number.isInteger(port) || port <= 0 || port > 65535)) {
  console.error('usage: node mcp_upstream.js PORT');
  process.exit(2);
}

const VERSIONS = new Set(['2025-03-26', '2025-06-18', '2025-11-25']);
const LATEST = '2025-11-25';
const SERVER_INFO = { name: 'bench-mcp-upstream', version: '1.0.0' };
const ECHO_TOOL = {
  name: 'echo',
  description: 'Returns its message.',
  inputSchema: {
    type: 'object',
    properties: { message: { type: 'string' }, delay_ms: { type: 'integer', minimum: 0 } },
    required: ['message'],
  },
};
const MAX_DELAY_MS = 60_000;

function option(name) {
  const at = process.argv.indexOf(name);
  return at > 0 ? process.argv[at + 1] : undefined;
}

function benchTool(n) {
  return {
    name: `echo_${String(n).padStart(3, '0')}`,
    title: `Echo ${n}`,
    description:
      `Echo-like tool ${n} of the benchmark: returns its message. Takes the options ` +
      'a real tool of a code-hosting or ticketing server would take.',
    inputSchema: {
      type: 'object',
      properties: {
        message: { type: 'string', description: 'The text to return.' },
        repository: { type: 'string', description: 'owner/name of the repository.' },
        limit: { type: 'integer', minimum: 1, maximum: 100, default: 30 },
        state: { type: 'string', enum: ['open', 'closed', 'all'], default: 'open' },
        labels: { type: 'array', items: { type: 'string' }, description: 'Labels to match.' },
        since: { type: 'string', format: 'date-time', description: 'Only newer items.' },
      },
      required: ['message'],
      additionalProperties: false,
    },
    annotations: { readOnlyHint: true, openWorldHint: false },
  };
}

const TOOL_COUNT = Number.parseInt(option('--tools') ?? '1', 10);
const TOOLS = [ECHO_TOOL];
for (let n = 1; n < TOOL_COUNT; n++) TOOLS.push(benchTool(n));
const TOOL_NAMES = new Set(TOOLS.map((tool) => tool.name));
// Serialized once: with 500 tools, JSON.stringify per list would be most of the cost.
const TOOLS_JSON = JSON.stringify(TOOLS);
const SSE = process.argv.includes('--sse');

const sessions = new Set();

function send(res, status, message, extraHeaders) {
  const body = message === undefined ? '' : JSON.stringify(message);
  const headers = { 'Content-Length': String(Buffer.byteLength(body)) };
  if (message !== undefined) headers['Content-Type'] = 'application/json';
  res.writeHead(status, { ...headers, ...extraHeaders });
  res.end(body);
}

function sendJson(res, body) {
  res.writeHead(200, {
    'Content-Type': 'application/json',
    'Content-Length': String(Buffer.byteLength(body)),
  });
  res.end(body);
}

function result(id, value) {
  return { jsonrpc: '2.0', id, result: value };
}

function error(id, code, message) {
  return { jsonrpc: '2.0', id, error: { code, message } };
}

function handlePost(req, res, raw) {
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch {
    send(res, 400, error(null, -32700, 'Parse error'));
    return;
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg) || msg.jsonrpc !== '2.0') {
    send(res, 400, error(null, -32600, 'Invalid Request: one JSON-RPC message per POST'));
    return;
  }
  const id = msg.id ?? null;
  if (msg.method === 'initialize') {
    const asked = msg.params?.protocolVersion;
    const sid = crypto.randomUUID();
    sessions.add(sid);
    const value = {
      protocolVersion: VERSIONS.has(asked) ? asked : LATEST,
      capabilities: { tools: {} },
      serverInfo: SERVER_INFO,
    };
    send(res, 200, result(id, value), { 'Mcp-Session-Id': sid });
    return;
  }
  const sid = req.headers['mcp-session-id'];
  if (sid === undefined) {
    send(res, 400, error(id, -32000, 'Bad Request: no Mcp-Session-Id header'));
    return;
  }
  if (!sessions.has(sid)) {
    send(res, 404, error(id, -32001, 'Session not found'));
    return;
  }
  if (msg.id === undefined || msg.method === undefined) {
    // A notification (notifications/initialized, ...) or a response to us.
    res.writeHead(202, { 'Content-Length': '0' });
    res.end();
    return;
  }
  switch (msg.method) {
    case 'tools/call': {
      const params = msg.params ?? {};
      if (!TOOL_NAMES.has(params.name)) {
        send(res, 200, error(id, -32602, `Unknown tool: ${params.name}`));
        return;
      }
      const text = String(params.arguments?.message ?? '');
      const answer = () => send(res, 200, result(id, { content: [{ type: 'text', text }] }));
      const delay = Number(params.arguments?.delay_ms ?? 0);
      if (delay > 0) setTimeout(answer, Math.min(delay, MAX_DELAY_MS));
      else answer();
      return;
    }
    case 'tools/list':
      sendJson(res, `{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":{"tools":${TOOLS_JSON}}}`);
      return;
    case 'ping':
      send(res, 200, result(id, {}));
      return;
    default:
      send(res, 200, error(id, -32601, `Method not found: ${msg.method}`));
  }
}

function serve(req, res) {
  const path = req.url.split('?', 1)[0];
  if (SSE && path.startsWith('/admin/')) {
    req.resume();
    admin(req, res, path);
    return;
  }
  if (path !== '/mcp') {
    req.resume();
    send(res, 404, error(null, -32600, `Not found: ${path}`));
    return;
  }
  if (req.method === 'POST') {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => handlePost(req, res, Buffer.concat(chunks).toString('utf8')));
    return;
  }
  req.resume();
  if (req.method === 'DELETE') {
    sessions.delete(req.headers['mcp-session-id']);
    res.writeHead(200, { 'Content-Length': '0' });
    res.end();
    return;
  }
  if (SSE && req.method === 'GET') {
    openStream(req, res);
    return;
  }
  // No server-to-client stream: GET (and anything else) is not allowed.
  send(res, 405, error(null, -32600, 'Method Not Allowed'), { Allow: 'POST, DELETE' });
}

const TLS_CERT = option('--tls-cert');
const TLS_KEY = option('--tls-key');
if ((TLS_CERT === undefined) !== (TLS_KEY === undefined)) {
  console.error('mcp_upstream.js: --tls-cert and --tls-key go together');
  process.exit(2);
}
const server =
  TLS_CERT === undefined
    ? http.createServer(serve)
    : https.createServer({ cert: fs.readFileSync(TLS_CERT), key: fs.readFileSync(TLS_KEY) }, serve);

// --sse: the sessions' open GET streams, and the broadcast that feeds them.
const streams = new Set();
let eventsSent = 0;

function openStream(req, res) {
  const sid = req.headers['mcp-session-id'];
  if (sid === undefined || !sessions.has(sid)) {
    send(res, sid === undefined ? 400 : 404, error(null, -32001, 'Session not found'));
    return;
  }
  if (!String(req.headers.accept ?? '').includes('text/event-stream')) {
    send(res, 406, error(null, -32600, 'Accept must include text/event-stream'));
    return;
  }
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
  res.flushHeaders();
  const stream = { res, seq: 0 };
  streams.add(stream);
  res.on('close', () => streams.delete(stream));
}

// Every event says its number on its stream and when it was written (ms since
// the epoch, sub-millisecond), so a client can count losses and latency.
function pushEvent(stream) {
  const data = { seq: stream.seq++, t: performance.timeOrigin + performance.now() };
  const message = {
    jsonrpc: '2.0',
    method: 'notifications/message',
    params: { level: 'info', logger: 'bench', data },
  };
  stream.res.write(`event: message\ndata: ${JSON.stringify(message)}\n\n`);
  eventsSent += 1;
}

// Event 0 goes to every open stream at once; events 1 to count-1 follow
// round-robin over the streams at `rate` events per second in total.
function broadcast(count, rate) {
  const targets = [...streams];
  for (const stream of targets) pushEvent(stream);
  const total = targets.length * (count - 1);
  if (total <= 0) return;
  const start = performance.now();
  let sent = 0;
  const tick = () => {
    const due = Math.min(total, Math.floor(((performance.now() - start) * rate) / 1000));
    for (; sent < due; sent++) {
      const stream = targets[sent % targets.length];
      if (streams.has(stream)) pushEvent(stream);
    }
    if (sent < total) setTimeout(tick, 1);
  };
  setTimeout(tick, 1);
}

function admin(req, res, path) {
  const query = new URL(req.url, 'http://localhost').searchParams;
  if (path === '/admin/stats') {
    send(res, 200, { streams: streams.size, sessions: sessions.size, sent: eventsSent });
  } else if (path === '/admin/broadcast' && req.method === 'POST') {
    const count = Number.parseInt(query.get('count') ?? '1', 10);
    const rate = Number(query.get('rate') ?? '1000');
    send(res, 200, { streams: streams.size, count, rate });
    broadcast(count, rate);
  } else {
    send(res, 404, error(null, -32600, `Not found: ${path}`));
  }
}

// Longer than any client pool's idle timeout (agentgw's default is 90 s), so an
// idle pooled connection is never closed under the client between rounds.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

// In stdio mode each line of stdin goes through handlePost as a POST on one
// fixed session, and each answer with a body becomes one line of stdout.
function serveStdio() {
  const STDIO_SESSION = 'stdio';
  sessions.add(STDIO_SESSION);
  const req = { headers: { 'mcp-session-id': STDIO_SESSION } };
  const reply = () => {
    const chunks = [];
    return {
      writeHead() {},
      setHeader() {},
      write(chunk) {
        chunks.push(String(chunk));
      },
      end(chunk) {
        if (chunk) chunks.push(String(chunk));
        const body = chunks.join('');
        if (body) process.stdout.write(`${body}\n`);
      },
    };
  };
  let pending = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (data) => {
    pending += data;
    let newline = pending.indexOf('\n');
    while (newline >= 0) {
      const line = pending.slice(0, newline).trim();
      pending = pending.slice(newline + 1);
      if (line) handlePost(req, reply(), line);
      newline = pending.indexOf('\n');
    }
  });
  process.stdin.on('end', () => process.exit(0));
}

if (stdio) {
  serveStdio();
} else {
  server.listen(port, '127.0.0.1', () => {
    const scheme = TLS_CERT === undefined ? 'http' : 'https';
    console.log(`mcp upstream listening on ${scheme}://127.0.0.1:${port}`);
  });
}

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
