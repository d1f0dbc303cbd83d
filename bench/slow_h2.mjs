// The slow-streams client over HTTP/2 cleartext (h2c, prior knowledge), for `python -m bench slow-streams --http2`:
// `node bench/slow_h2.mjs '<json>'` with the plan of bench/slow_load.py plus per_session (streams per HTTP/2
// connection). Node's own http2 client (nghttp2, no npm package). Prints the same one JSON line as
// bench/slow_load.py: streams completed and failed, the peak open at once, and per stream the longest gap between
// two content chunks, the wait for the last one ([DONE]) and the frames received (nearest-rank percentiles).
import http2 from "node:http2";
const plan = JSON.parse(process.argv[2]);
const u = new URL(plan.url);
const origin = `${u.protocol}//${u.host}`;
const body = JSON.stringify({model: plan.model, messages: [{role: "user", content: "Say hello in five words."}], max_tokens: 64, stream: true, stream_options: {include_usage: true}});
const out = {completed: 0, errors: 0, first_error: null, open_now: 0, peak_open: 0, peak_at: null, first_done_at: null, last_done_at: null, ramp_seconds: 0, elapsed: 0};
const gaps = [], tails = [], frames = [];
const sessions = [];
function session(i) {
  const k = Math.floor(i / plan.per_session);
  if (!sessions[k]) { const s = http2.connect(origin); s.on("error", (e) => fail("session: " + e.message)); sessions[k] = s; }
  return sessions[k];
}
function fail(reason) { out.errors++; if (out.first_error === null) out.first_error = String(reason).slice(0, 500); }
function one(i) {
  return new Promise((resolve) => {
    const s = session(i);
    const req = s.request({":method": "POST", ":path": u.pathname, "authorization": `Bearer ${plan.key}`, "content-type": "application/json"});
    req.setTimeout(plan.timeout * 1000, () => { fail("timeout"); req.close(); });
    let status = 0, opened = false, text = "", gap = 0, prev = 0, last = performance.now();
    req.on("response", (h) => { status = h[":status"]; });
    req.on("data", (c) => {
      const now = performance.now(); const s = c.toString();
      if (!opened && s.includes("data:")) { opened = true; out.open_now++; if (out.open_now > out.peak_open) { out.peak_open = out.open_now; out.peak_at = Date.now() / 1000; } }
      else if (opened) { gap = Math.max(gap, prev); prev = now - last; }
      last = now; text += s;
    });
    const done = () => {
      if (opened) out.open_now--;
      out.last_done_at = Date.now() / 1000;
      resolve();
    };
    req.on("end", () => {
      if (status !== 200 || !text.endsWith("data: [DONE]\n\n") || text.includes('"error"')) fail(`HTTP ${status}: ${text.slice(-300)}`);
      else { out.completed++; out.first_done_at = out.first_done_at || Date.now() / 1000; gaps.push(gap); tails.push(prev); frames.push((text.match(/data:/g) || []).length); }
      done();
    });
    req.on("error", (e) => { fail("stream: " + e.message); done(); });
    req.end(body);
  });
}
function pct(a, q) { if (!a.length) return null; const o = [...a].sort((x, y) => x - y); return o[Math.max(0, Math.min(o.length - 1, Math.round(q / 100 * o.length + 0.5) - 1))]; }
const started = performance.now();
const all = [];
for (let i = 0; i < plan.streams; i++) {
  const delay = started + i * 1000 / plan.ramp - performance.now();
  if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  all.push(one(i));
}
out.ramp_seconds = (performance.now() - started) / 1000;
await Promise.all(all);
out.elapsed = (performance.now() - started) / 1000;
for (const s of sessions) s.close();
out.max_gap_ms = {50: pct(gaps, 50), 99: pct(gaps, 99), 100: pct(gaps, 100)};
out.tail_ms = {50: pct(tails, 50), 99: pct(tails, 99), 100: pct(tails, 100)};
out.frames = {0: pct(frames, 0), 50: pct(frames, 50), 100: pct(frames, 100)};
out.nofile = null; // Node cannot read its open-file limit; bench/slow.py reports the gateway's
process.stdout.write(JSON.stringify(out) + "\n");
