// Webhook receivers written the way the seed documents show them, one per
// path, to prove that every delivery of a seed format verifies exactly as the
// document's own receiver code checks it. Node core only.
//
//   node seeds.js   (WEBHOOK_SECRET in the environment)
//   prints "LISTENING <port>", then answers:
//   POST /000 … /004   200 if the signature verifies as in that seed, else 401
//   GET  /stats        {"/000": {"ok": n, "bad": n, "types": [...]}, ...}
'use strict';
const http = require('http');
const crypto = require('crypto');

const secret = process.env.WEBHOOK_SECRET;
const hmacHex = (data) => crypto.createHmac('sha256', secret).update(data).digest('hex');
const safeEqual = (a, b) => {
  const x = Buffer.from(a || ''), y = Buffer.from(b || '');
  return x.length === y.length && crypto.timingSafeEqual(x, y);
};

const receivers = {
  // 000: verifyWebhookSignature(req.body, req.headers['x-webhook-signature'], secret)
  '/000': (raw, body, h) => safeEqual(h['x-webhook-signature'], hmacHex(JSON.stringify(body))),
  // 001: verifyWebhook(body, signature, secret) over the raw body, 'sha256=' stripped
  '/001': (raw, body, h) => safeEqual(hmacHex(raw), (h['x-signature'] || '').replace('sha256=', '')),
  // 002: JSON.stringify(req.body.data), compared with !==
  '/002': (raw, body, h) => h['x-webhook-signature'] === hmacHex(JSON.stringify(body.data)),
  // 003: req.bodyRaw, compared with !==
  '/003': (raw, body, h) => h['x-webhook-signature'] === hmacHex(raw),
  // 004: JSON.stringify(req.body), compared with !==
  '/004': (raw, body, h) => h['x-corp-astro-signature'] === hmacHex(JSON.stringify(body)),
};

const stats = {};
for (const path of Object.keys(receivers)) stats[path] = { ok: 0, bad: 0, types: [] };

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    res.setHeader('content-type', 'application/json');
    return res.end(JSON.stringify(stats));
  }
  const verify = receivers[req.url];
  if (!verify) { res.statusCode = 404; return res.end(); }
  let data = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => { data += chunk; });
  req.on('end', () => {
    let body;
    try { body = JSON.parse(data); } catch (e) { body = data; }
    let ok = false;
    try { ok = verify(data, body, req.headers); } catch (e) { ok = false; }
    const s = stats[req.url];
    if (ok) {
      s.ok += 1;
      s.types.push(body.event || body.event_type || req.headers['x-event-type'] || null);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ received: true }));
    } else {
      s.bad += 1;
      res.statusCode = 401;
      res.end(JSON.stringify({ error: 'Invalid signature' }));
    }
  });
});
server.listen(0, '127.0.0.1', () => {
  console.log('LISTENING ' + server.address().port);
});
