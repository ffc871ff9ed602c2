/* sillage.js - the browser tag for sillage (docs/TAG.md). No dependencies.
 * Keeps an anonymousId (first-party cookie + localStorage), a session, an
 * outbox in localStorage; sends batches to POST /v1/batch as text/plain (no
 * CORS preflight), with sendBeacon when the page goes away, and retries with
 * backoff. Calls queued by the snippet's stub are replayed in order.
 * Nothing touches the device until on() allows it (consent, opt-out, GPC):
 * get, put and cookie do nothing before; in consent "required" mode calls
 * wait in memory for sillage.consent(). */
(function (w, d) {
  var VERSION = '0.1.0';
  var stub = w.sillage;
  if (stub && stub.v) return; // loaded twice
  var queued = stub || [];
  var nav = navigator, loc = w.location, ls;
  try { ls = w.localStorage; } catch (e) {}
  var P = 'sillage_';
  var cfg = { flushAt: 20, flushIntervalMs: 2000, maxOutbox: 500, respectGpc: true, cookieDays: 395 };
  var outbox = [], timer, sending, backoff = 0, until = 0, lastUrl, started;
  // dev: the device may be read and written; out: optOut() on this page;
  // ps: the consent categories (JSON); held: calls waiting for consent;
  // rp: the held call being replayed (its time and page).
  var dev, out, ps, held = [], rp;
  var aid, uid, traits;

  function get(k) { if (dev) try { return ls.getItem(P + k); } catch (e) {} }
  function put(k, v) { if (dev) try { v == null ? ls.removeItem(P + k) : ls.setItem(P + k, v); } catch (e) {} }
  function json(s, dflt) { try { return JSON.parse(s) || dflt; } catch (e) { return dflt; } }
  // The anonymousId's cookie: read (no v), written for s seconds, or deleted (v '').
  function cookie(v, s) {
    if (v === undefined) return (d.cookie.match('(?:^|; )sillage_aid=([^;]*)') || [])[1];
    d.cookie = 'sillage_aid=' + v + '; path=/; SameSite=Lax; max-age=' + (v ? s : 0) + (loc.protocol == 'https:' ? '; Secure' : '');
  }
  function uuid() { // v4; getRandomValues works over http too (randomUUID does not)
    return '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, function (x) {
      return (x ^ w.crypto.getRandomValues(new Uint8Array(1))[0] & 15 >> x / 4).toString(16);
    });
  }
  function now() { return new Date().toISOString(); }

  // The identifier's life is fixed when it is created (at most 395 days,
  // CNIL's 13 months); the localStorage copy carries its creation time so it
  // cannot outlive the cookie.
  function setAid(v, t) {
    var n = +new Date();
    aid = v;
    t = t || n;
    put('aid', JSON.stringify({ id: v, t: t }));
    cookie(v, (t + Math.min(cfg.cookieDays, 395) * 864e5 - n) / 1000 | 0);
  }
  function reset() { put('uid', uid = null); put('traits'); traits = {}; put('session'); setAid(uuid()); }
  // Whether the tag may run now: 1 (the first time, it reads the device), 0
  // (waiting for consent), undefined (opted out, refused, GPC).
  function on() {
    var c = json(ps), k, yes;
    for (k in c) if (c[k] === true) yes = 1; // any category granted
    if (out || (cfg.respectGpc && nav.globalPrivacyControl === true) || ps && !yes) return;
    if (!ps && cfg.consent == 'required') return 0;
    if (!dev) {
      dev = 1;
      ps = ps || get('consent');
      uid = get('uid');
      traits = json(get('traits'), {});
      var a = json(get('aid'), {}), c = cookie();
      if (c) aid = c; // not rewritten: its expiry stays the one set at creation
      else if (a.id && new Date() - a.t < Math.min(cfg.cookieDays, 395) * 864e5) setAid(a.id, a.t);
      else reset(); // new, or expired with what belonged to it
    }
    return 1;
  }
  // Deletes every trace on the device, then stops reading and writing.
  function wipe() {
    dev = 1;
    'aid uid traits session outbox consent optout'.split(' ').forEach(function (k) { put(k); });
    cookie('');
    dev = 0;
    outbox = [];
    held = [];
  }

  function session() {
    var t = +new Date(), s = json(get('session'), {});
    if (!s.id || t - s.t > 1800000) s = { id: uuid() };
    s.t = t;
    put('session', JSON.stringify(s));
    return s.id;
  }

  function pageProps() {
    return rp ? json(rp[3]) : { url: loc.href, path: loc.pathname, title: d.title, referrer: d.referrer, search: loc.search };
  }
  function context() {
    var p = pageProps(), c = { library: { name: 'sillage.js', version: VERSION }, page: p, locale: nav.language,
      userAgent: nav.userAgent, screen: { width: screen.width, height: screen.height }, sessionId: dev ? session() : undefined };
    new URLSearchParams(p.search).forEach(function (v, k) {
      if (!k.indexOf('utm_')) (c.campaign = c.campaign || {})[k == 'utm_campaign' ? 'name' : k.slice(4)] = v;
    });
    if (ps) c.consent = { categoryPreferences: json(ps) };
    return c;
  }

  function save() { put('outbox', JSON.stringify(outbox)); }
  function msg(type, m) {
    m.type = type;
    m.messageId = uuid();
    m.timestamp = rp ? rp[2] : now();
    m.anonymousId = aid;
    if (uid && type != 'alias') m.userId = m.userId || uid;
    m.context = context();
    return m;
  }
  function send(type, m) {
    outbox = json(get('outbox'), outbox); // another tab may have sent some
    outbox.push(msg(type, m));
    outbox = outbox.slice(-cfg.maxOutbox); // past it, the oldest go
    save();
    if (outbox.length >= cfg.flushAt) flush();
    else if (!timer) timer = setTimeout(flush, cfg.flushIntervalMs);
  }

  function post(batch, beacon, done) {
    var body = JSON.stringify({ batch: batch, sentAt: now(), writeKey: cfg.writeKey }), url = cfg.host + '/v1/batch';
    if (beacon && nav.sendBeacon) {
      // Queued by the browser, delivered after the page is gone. If it ever
      // arrives twice (the outbox resends), the server dedupes by messageId.
      if (nav.sendBeacon(url, new Blob([body], { type: 'text/plain' }))) done(1);
      return;
    }
    sending = 1; // a string body goes as text/plain;charset=UTF-8: no CORS preflight
    w.fetch(url, { method: 'POST', body: body, keepalive: body.length < 60000, credentials: 'omit' })
      .then(function (r) { done(r.ok || (r.status >= 400 && r.status < 500 && r.status != 429)); }, function () { done(0); });
  }
  // Sends what the outbox holds. beacon: the page is going away.
  function flush(beacon) {
    clearTimeout(timer);
    timer = 0;
    if (!on()) return;
    outbox = json(get('outbox'), outbox);
    if (!outbox.length || !cfg.host || (sending && !beacon)) return;
    var wait = until - new Date();
    if (wait > 0 && !beacon) { timer = setTimeout(flush, wait); return; } // backing off
    var batch = [], size = 0;
    while (batch.length < outbox.length && batch.length < 100 && size < 50000)
      size += JSON.stringify(batch[batch.length] = outbox[batch.length]).length;
    post(batch, beacon, function (ok) {
      sending = 0;
      if (!ok) { // network error, 429, 5xx: keep them, try again later
        backoff = Math.min(backoff * 2 || 1000, 60000);
        var d = backoff * (0.75 + Math.random() / 2);
        until = +new Date() + d;
        timer = setTimeout(flush, d);
        return;
      }
      backoff = until = 0;
      var ids = {};
      for (var i = 0; i < batch.length; i++) ids[batch[i].messageId] = 1;
      outbox = json(get('outbox'), outbox).filter(function (m) { return !ids[m.messageId]; });
      save();
      if (outbox.length) flush();
    });
  }

  var api = {
    v: VERSION,
    init: function (o) {
      for (var k in o) cfg[k] = o[k];
      if (cfg.host) cfg.host = String(cfg.host).replace(/\/$/, '');
      if (started) return;
      started = 1;
      function bye() { flush(1); }
      w.addEventListener('pagehide', bye);
      d.addEventListener('visibilitychange', function () { if (d.visibilityState == 'hidden') bye(); });
      w.addEventListener('online', function () { backoff = until = 0; flush(); });
      if (cfg.spa) {
        var h = w.history, wrap = function (f) {
          return function () { var r = f.apply(h, arguments); spaPage(); return r; };
        };
        h.pushState = wrap(h.pushState);
        h.replaceState = wrap(h.replaceState);
        w.addEventListener('popstate', spaPage);
      }
      lastUrl = loc.href;
      setTimeout(flush, 0); // what a previous page left in the outbox
    },
    page: function (name, props) {
      if (typeof name == 'object') { props = name; name = undefined; }
      var p = pageProps();
      for (var k in props) p[k] = props[k];
      lastUrl = loc.href;
      send('page', { name: name, properties: p });
    },
    track: function (event, props) { send('track', { event: event, properties: props || {} }); },
    identify: function (userId, t) {
      if (typeof userId == 'object') { t = userId; userId = undefined; }
      if (userId != null) {
        userId = String(userId);
        if (uid && uid != userId) { setAid(uuid()); traits = {}; } // another person on this device
        put('uid', uid = userId);
      }
      for (var k in t) traits[k] = t[k];
      put('traits', JSON.stringify(traits));
      send('identify', { traits: traits });
    },
    alias: function (userId, previousId) {
      send('alias', { userId: String(userId), previousId: previousId || uid || aid });
    },
    reset: reset,
    flush: flush,
    anonymousId: function () { if (on()) return aid; },
    // categories: {analytics: true, marketing: false, ...}; any true grants.
    // A change of granted preferences is sent, a revocation too (then the
    // tag stops as with optOut); nothing is sent if nothing was granted.
    consent: function (c) {
      // granted before on this page (asking on() would touch the device first)
      var old = dev && !out && ps, m = { event: 'Consent Preference Updated', properties: {} };
      ps = JSON.stringify(c);
      if (on()) {
        old = old || get('consent'); // what an earlier page was granted
        put('consent', ps);
        for (; held.length; rp = 0) (rp = held.shift())[0].apply(api, rp[1]);
        if (old && old != ps) send('track', m);
        flush(); // and what an earlier page left
      } else {
        wipe();
        if (old) post([msg('track', m)], 1, function () { sending = 0; });
      }
    },
    optOut: function () { out = 1; wipe(); },
    optIn: function () { out = 0; }
  };
  // Before consent (required mode) calls wait in memory, the first 100 kept,
  // with their time and page; opted out, refused or under GPC they are dropped.
  'page track identify alias reset'.split(' ').forEach(function (n) {
    var f = api[n];
    api[n] = function () {
      var o = on();
      if (o) f.apply(api, arguments);
      else if (o === 0 && held.length < 100) held.push([f, arguments, now(), JSON.stringify(pageProps())]);
    };
  });
  function spaPage() { if (loc.href != lastUrl) api.page(); }

  // <script src=".../sillage.js" data-write-key="..."> configures itself.
  var me = d.currentScript, wk = me && me.getAttribute('data-write-key');
  if (me && me.src) cfg.host = me.src.replace(/\/sillage\.js(\?.*)?$/, '');
  w.sillage = api;
  if (wk) api.init({ writeKey: wk, consent: me.getAttribute('data-consent') });
  // what the page queued (an optOut, a consent) goes before the automatic page view
  for (var i = 0; i < queued.length; i++) {
    var c = queued[i];
    if (api[c[0]]) api[c[0]].apply(api, c.slice(1));
  }
  if (wk && me.getAttribute('data-auto-page') != 'false') api.page();
})(window, document);
