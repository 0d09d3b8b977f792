// A minimal upstream for bench/: answers every request with a small fixed
// JSON body, keep-alive on. Node's built-in http module only.
// Usage: node upstream.js PORT
'use strict';

const http = require('node:http');

const port = Number.parseInt(process.argv[2] ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node upstream.js PORT');
  process.exit(2);
}

const body = Buffer.from('{"jsonrpc":"2.0","id":1,"result":{"ok":true}}');
const headers = {
  'Content-Type': 'application/json',
  'Content-Length': String(body.length),
};

const server = http.createServer((req, res) => {
  req.resume(); // read and discard the request body
  req.on('end', () => {
    res.writeHead(200, headers);
    res.end(body);
  });
});

// Longer than any client pool's idle timeout (agentgw's default is 90 s), so an
// idle pooled connection is never closed under the client between rounds.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

server.listen(port, '127.0.0.1', () => {
  console.log(`upstream listening on 127.0.0.1:${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
