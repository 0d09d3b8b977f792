// An OTLP/HTTP trace collector that keeps nothing, for bench/ (scenario mcp,
// system gateway-1-tracing). Node's standard library only.
// Usage: node otlp_sink.js PORT
//   POST /v1/traces   an ExportTraceServiceRequest (protobuf, optionally gzip):
//                     its spans are counted by kind, then it is dropped; the
//                     answer is 200 with an empty ExportTraceServiceResponse
//   GET /stats        {exports, bytes, spans, server, client, other, rejected} as JSON
// Anything else gets 404. A body over 64 MiB, or one that is not the protobuf
// it should be, is answered 400 and counted as rejected.
//
// The spans are counted by walking the protobuf's wire format, not decoded:
//   ExportTraceServiceRequest  1: repeated ResourceSpans
//   ResourceSpans              2: repeated ScopeSpans
//   ScopeSpans                 2: repeated Span
//   Span                       6: kind (2 SERVER, 3 CLIENT)
'use strict';

const http = require('node:http');
const zlib = require('node:zlib');

const port = Number.parseInt(process.argv[2] ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node otlp_sink.js PORT');
  process.exit(2);
}

const MAX_BODY = 64 * 1024 * 1024;
const SPAN_KIND_SERVER = 2;
const SPAN_KIND_CLIENT = 3;
const stats = { exports: 0, bytes: 0, spans: 0, server: 0, client: 0, other: 0, rejected: 0 };

// Yields [field number, wire type, value]: a Number for varints, a Buffer for
// length-delimited fields; fixed-width fields are skipped over.
function* fields(buf) {
  let at = 0;
  const varint = () => {
    let value = 0;
    let scale = 1;
    for (;;) {
      if (at >= buf.length) throw new Error('truncated varint');
      const byte = buf[at++];
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 128;
      if (scale > 2 ** 63) throw new Error('varint too long');
    }
  };
  while (at < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const type = key % 8;
    if (type === 0) {
      yield [field, type, varint()];
    } else if (type === 2) {
      const length = varint();
      if (at + length > buf.length) throw new Error('truncated field');
      yield [field, type, buf.subarray(at, at + length)];
      at += length;
    } else if (type === 1 || type === 5) {
      at += type === 1 ? 8 : 4;
    } else {
      throw new Error(`wire type ${type}`);
    }
  }
  if (at !== buf.length) throw new Error('truncated message');
}

function embedded(buf, number) {
  const out = [];
  for (const [field, type, value] of fields(buf)) {
    if (field === number && type === 2) out.push(value);
  }
  return out;
}

function countSpans(request) {
  const counts = { spans: 0, server: 0, client: 0, other: 0 };
  for (const resourceSpans of embedded(request, 1)) {
    for (const scopeSpans of embedded(resourceSpans, 2)) {
      for (const span of embedded(scopeSpans, 2)) {
        let kind = 0;
        for (const [field, type, value] of fields(span)) {
          if (field === 6 && type === 0) kind = value;
        }
        counts.spans += 1;
        if (kind === SPAN_KIND_SERVER) counts.server += 1;
        else if (kind === SPAN_KIND_CLIENT) counts.client += 1;
        else counts.other += 1;
      }
    }
  }
  return counts;
}

function answer(res, status, body, type) {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': String(body.length) });
  res.end(body);
}

function receive(req, res) {
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size <= MAX_BODY) chunks.push(chunk);
  });
  req.on('end', () => {
    let counts;
    try {
      if (size > MAX_BODY) throw new Error('body too large');
      let body = Buffer.concat(chunks);
      if (req.headers['content-encoding'] === 'gzip') body = zlib.gunzipSync(body);
      counts = countSpans(body);
    } catch (exc) {
      stats.rejected += 1;
      answer(res, 400, Buffer.from(`${exc.message}\n`), 'text/plain');
      return;
    }
    stats.exports += 1;
    stats.bytes += size;
    for (const key of ['spans', 'server', 'client', 'other']) stats[key] += counts[key];
    answer(res, 200, Buffer.alloc(0), 'application/x-protobuf');
  });
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?', 1)[0];
  if (req.method === 'POST' && path === '/v1/traces') {
    receive(req, res);
    return;
  }
  req.resume();
  if (req.method === 'GET' && path === '/stats') {
    answer(res, 200, Buffer.from(JSON.stringify(stats)), 'application/json');
    return;
  }
  answer(res, 404, Buffer.from('not found\n'), 'text/plain');
});
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;
server.listen(port, '127.0.0.1', () => {
  console.log(`otlp sink listening on 127.0.0.1:${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
