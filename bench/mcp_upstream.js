// A minimal MCP server for bench/: Streamable HTTP at /mcp with one tool,
// `echo`, answering every request as application/json (never SSE), keep-alive
// on. Node's built-in http module only. It checks session ids (400 without
// one, 404 for an unknown one) so a gateway that loses them shows up as errors.
// Usage: node mcp_upstream.js PORT
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');

const port = Number.parseInt(process.argv[2] ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
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
    properties: { message: { type: 'string' } },
    required: ['message'],
  },
};

const sessions = new Set();

function send(res, status, message, extraHeaders) {
  const body = message === undefined ? '' : JSON.stringify(message);
  const headers = { 'Content-Length': String(Buffer.byteLength(body)) };
  if (message !== undefined) headers['Content-Type'] = 'application/json';
  res.writeHead(status, { ...headers, ...extraHeaders });
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
      if (params.name !== 'echo') {
        send(res, 200, error(id, -32602, `Unknown tool: ${params.name}`));
        return;
      }
      const text = String(params.arguments?.message ?? '');
      send(res, 200, result(id, { content: [{ type: 'text', text }] }));
      return;
    }
    case 'tools/list':
      send(res, 200, result(id, { tools: [ECHO_TOOL] }));
      return;
    case 'ping':
      send(res, 200, result(id, {}));
      return;
    default:
      send(res, 200, error(id, -32601, `Method not found: ${msg.method}`));
  }
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?', 1)[0];
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
  // No server-to-client stream: GET (and anything else) is not allowed.
  send(res, 405, error(null, -32600, 'Method Not Allowed'), { Allow: 'POST, DELETE' });
});

// Longer than any client pool's idle timeout (agentgw's default is 90 s), so an
// idle pooled connection is never closed under the client between rounds.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

server.listen(port, '127.0.0.1', () => {
  console.log(`mcp upstream listening on 127.0.0.1:${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
