// The upstream of bench/ scenario `body-50mb`: POST counts and discards the
// request body, then answers {"bytes": N}; GET /download?bytes=N answers N
// bytes as a chunked stream, 64 KiB per write, minding backpressure. Node's
// built-in http module only.
// Usage: node body_upstream.js PORT
'use strict';

const http = require('node:http');

const port = Number.parseInt(process.argv[2] ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node body_upstream.js PORT');
  process.exit(2);
}

const CHUNK = Buffer.alloc(64 * 1024, 'x');

function download(res, total) {
  res.writeHead(200, { 'Content-Type': 'application/octet-stream' }); // chunked
  let left = total;
  const pump = () => {
    while (left > 0) {
      const piece = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
      left -= piece.length;
      if (!res.write(piece)) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (req.method === 'GET' && url.pathname === '/download') {
    req.resume();
    download(res, Number(url.searchParams.get('bytes') ?? '0'));
    return;
  }
  let bytes = 0;
  req.on('data', (chunk) => {
    bytes += chunk.length;
  });
  req.on('end', () => {
    const body = JSON.stringify({ bytes });
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
    res.end(body);
  });
});

server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

server.listen(port, '127.0.0.1', () => {
  console.log(`body upstream listening on 127.0.0.1:${port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
