// The client of bench/ scenario `body-50mb`: one large body through a URL.
//   upload:   POST BYTES bytes (Content-Length, 64 KiB per write, minding
//             backpressure) to URL; the answer must be {"bytes": BYTES}
//   download: GET URL/download?bytes=BYTES; the body must be BYTES long
// Prints one JSON line: bytes, seconds from the first byte sent to the last
// byte received, MB/s (10^6 bytes), status, ok.
// Usage: node body_client.js upload|download URL BYTES
'use strict';

const http = require('node:http');

const [direction, base, bytesText] = process.argv.slice(2);
const total = Number(bytesText);
if (!['upload', 'download'].includes(direction) || !base || !(total > 0)) {
  console.error('usage: node body_client.js upload|download URL BYTES');
  process.exit(2);
}

const CHUNK = Buffer.alloc(64 * 1024, 'y');
const agent = new http.Agent({ keepAlive: false });

function finish(started, status, received, ok, why) {
  const seconds = (performance.now() - started) / 1000;
  const summary = { direction, bytes: total, received, status, ok, why, seconds };
  summary.mb_per_s = total / 1e6 / seconds;
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  process.exit(0);
}

const started = performance.now();
if (direction === 'upload') {
  const req = http.request(new URL(base), {
    method: 'POST',
    agent,
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': total },
  });
  req.on('response', (res) => {
    const chunks = [];
    res.on('data', (c) => chunks.push(c));
    res.on('end', () => {
      let counted = null;
      try {
        counted = JSON.parse(Buffer.concat(chunks).toString('utf8')).bytes;
      } catch {}
      const ok = res.statusCode === 200 && counted === total;
      finish(started, res.statusCode, counted, ok, ok ? null : 'upstream count differs');
    });
  });
  req.on('error', (err) => finish(started, 0, 0, false, String(err)));
  let left = total;
  const pump = () => {
    while (left > 0) {
      const piece = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
      left -= piece.length;
      if (!req.write(piece)) {
        req.once('drain', pump);
        return;
      }
    }
    req.end();
  };
  pump();
} else {
  const url = new URL('download', base.endsWith('/') ? base : `${base}/`);
  url.searchParams.set('bytes', String(total));
  const req = http.request(url, { agent }, (res) => {
    let received = 0;
    res.on('data', (c) => {
      received += c.length;
    });
    res.on('end', () => {
      const ok = res.statusCode === 200 && received === total;
      finish(started, res.statusCode, received, ok, ok ? null : 'length differs');
    });
    res.on('error', (err) => finish(started, res.statusCode, received, false, String(err)));
  });
  req.on('error', (err) => finish(started, 0, 0, false, String(err)));
  req.end();
}
