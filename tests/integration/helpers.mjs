// helpers.mjs - start the real sillage binary on a loopback port with its own
// data directory, speak HTTP to it, run its other commands.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';

export const BIN = process.env.SILLAGE_BIN || new URL('../../build/sillage', import.meta.url).pathname;
export const WRITE_KEY = 'wk_test';
export const ADMIN = 'admin-test-token-0123'; // 16+ characters, not a write key: sillage refuses less

export function baseConfig(dataDir, extra = {}) {
  return {
    listen: '127.0.0.1:0',
    data_dir: dataDir,
    sources: [{ name: 'test', write_key: WRITE_KEY }, { name: 'other', write_key: 'wk_other' }],
    admin_token: ADMIN,
    ...extra,
  };
}

export function tempDir(prefix = 'sl-it-') {
  return mkdtempSync(join(tmpdir(), prefix));
}

// Starts `sillage serve -c <config>`; resolves once it logs its port.
export async function startServer({ config = {}, dir = tempDir(), args = [] } = {}) {
  const dataDir = join(dir, 'data');
  const cfg = baseConfig(dataDir, config);
  const cfgPath = join(dir, 'sillage.json');
  writeFileSync(cfgPath, JSON.stringify(cfg, null, 2), { mode: 0o600 }); // it holds secrets: others may not read it
  const child = spawn(BIN, ['serve', '-c', cfgPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start:\n' + log)), 10000);
    child.stderr.on('data', (d) => {
      log += d;
      const m = /listening on \S+:(\d+)/.exec(log);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited ${code}:\n${log}`)); });
  });
  child.removeAllListeners('exit');
  const exited = new Promise((resolve) => child.on('exit', (code, sig) => resolve({ code, sig })));
  const srv = {
    child, port, dir, dataDir, cfgPath, config: cfg,
    url: `http://127.0.0.1:${port}`,
    log: () => log,
    exited,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
    exportEvents() { return exportEvents(dataDir); },
    cleanup() { rmSync(dir, { recursive: true, force: true }); },
  };
  return srv;
}

export function run(args, opts = {}) {
  const r = spawnSync(BIN, args, { encoding: 'utf8', timeout: 30000, ...opts });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function exportEvents(dataDir) {
  const r = run(['export', '--data', dataDir], { maxBuffer: 1 << 30 });
  if (r.code !== 0) throw new Error('export failed: ' + r.stderr);
  return r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

export function basic(key = WRITE_KEY) {
  return 'Basic ' + Buffer.from(key + ':').toString('base64');
}

export async function post(srv, path, body, headers = {}) {
  const res = await fetch(srv.url + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: basic(), ...headers },
    body: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

// Sends raw bytes on one TCP connection and collects everything until the
// server closes or `untilResponses` responses have arrived.
export function rawExchange(port, payload, { untilResponses = 1, timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let data = Buffer.alloc(0);
    const timer = setTimeout(() => { sock.destroy(); resolve(data.toString('latin1')); }, timeoutMs);
    sock.on('data', (d) => {
      data = Buffer.concat([data, d]);
      if (countResponses(data.toString('latin1')) >= untilResponses) {
        clearTimeout(timer); sock.end(); resolve(data.toString('latin1'));
      }
    });
    sock.on('end', () => { clearTimeout(timer); resolve(data.toString('latin1')); });
    sock.on('error', (e) => { clearTimeout(timer); if (data.length) resolve(data.toString('latin1')); else reject(e); });
    if (Array.isArray(payload)) {
      (async () => { for (const p of payload) { sock.write(p); await new Promise((r) => setTimeout(r, 30)); } })();
    } else {
      sock.write(payload);
    }
  });
}

// Counts complete HTTP responses (status line + headers + Content-Length body).
export function countResponses(text) {
  return parseResponses(text).length;
}

export function parseResponses(text) {
  const out = [];
  let rest = text;
  for (;;) {
    const he = rest.indexOf('\r\n\r\n');
    if (he < 0) break;
    const head = rest.slice(0, he);
    const m = /^HTTP\/1\.1 (\d{3})/.exec(head);
    if (!m) break;
    const cl = /\r\ncontent-length: (\d+)/i.exec(head);
    const len = cl ? Number(cl[1]) : 0;
    if (rest.length < he + 4 + len) break;
    out.push({ status: Number(m[1]), head, body: rest.slice(he + 4, he + 4 + len) });
    rest = rest.slice(he + 4 + len);
  }
  return out;
}

export function track(extra = {}) {
  return { userId: 'u-' + Math.random().toString(36).slice(2), event: 'Test Event', properties: { n: 1 }, ...extra };
}
