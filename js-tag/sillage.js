/* sillage.js - the browser tag for sillage (docs/TAG.md). No dependencies.
 * Keeps an anonymousId (first-party cookie + localStorage), a session, an
 * outbox in localStorage; sends batches to POST /v1/batch as text/plain (no
 * CORS preflight), with sendBeacon when the page goes away, and retries with
 * backoff. Calls queued by the snippet's stub are replayed in order. */
(function (w, d) {
  var VERSION = '0.1.0';
  var stub = w.sillage;
  if (stub && stub.v) return; // loaded twice
  var queued = Array.isArray(stub) ? stub : [];
  var nav = navigator, loc = w.location, ls;
  try { ls = w.localStorage; } catch (e) {}
  var P = 'sillage_';
  var cfg = { flushAt: 20, flushIntervalMs: 2000, maxOutbox: 500, spa: false, respectGpc: true };
  var outbox = [], timer, sending, backoff = 0, until = 0, lastUrl, started;

  function get(k) { try { return ls.getItem(P + k); } catch (e) {} }
  function put(k, v) { try { v == null ? ls.removeItem(P + k) : ls.setItem(P + k, v); } catch (e) {} }
  function json(s, dflt) { try { return JSON.parse(s) || dflt; } catch (e) { return dflt; } }
  function cookie(k, v) {
    if (v === undefined) {
      var m = d.cookie.match('(?:^|; )' + P + k + '=([^;]*)');
      return m && decodeURIComponent(m[1]);
    }
    d.cookie = P + k + '=' + encodeURIComponent(v) + '; path=/; SameSite=Lax' +
      (v ? '; max-age=31536000' : '; max-age=0') + (loc.protocol == 'https:' ? '; Secure' : '');
  }
  function uuid() {
    var c = w.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    return '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, function (x) {
      return (x ^ (c ? c.getRandomValues(new Uint8Array(1))[0] : Math.random() * 256) & 15 >> x / 4).toString(16);
    });
  }
  function now() { return new Date().toISOString(); }

  var aid, uid = get('uid'), traits = json(get('traits'), {});
  function setAid(v) { aid = v; put('aid', v); cookie('aid', v); }
  setAid(cookie('aid') || get('aid') || uuid()); // renews the cookie's year

  function session() {
    var t = +new Date(), s = json(get('session'), {});
    if (!s.id || t - s.t > 1800000) s = { id: uuid() };
    s.t = t;
    put('session', JSON.stringify(s));
    return s.id;
  }
  function optedOut() { return get('optout') == '1' || (cfg.respectGpc && nav.globalPrivacyControl === true); }

  function pageProps() {
    return { url: loc.href, path: loc.pathname, title: d.title, referrer: d.referrer, search: loc.search };
  }
  function context() {
    var c = { library: { name: 'sillage.js', version: VERSION }, page: pageProps(), locale: nav.language,
      userAgent: nav.userAgent, screen: { width: screen.width, height: screen.height }, sessionId: session() };
    var camp = {}, q = loc.search.slice(1).split('&'), n = 0;
    for (var i = 0; i < q.length; i++) {
      var kv = q[i].split('='), k = decodeURIComponent(kv[0] || '');
      if (k.indexOf('utm_') == 0) { camp[k == 'utm_campaign' ? 'name' : k.slice(4)] = decodeURIComponent((kv[1] || '').replace(/\+/g, ' ')); n++; }
    }
    if (n) c.campaign = camp;
    return c;
  }

  function save() { put('outbox', JSON.stringify(outbox)); }
  function send(type, m) {
    if (optedOut()) return;
    m.type = type;
    m.messageId = uuid();
    m.timestamp = now();
    m.anonymousId = aid;
    if (uid && type != 'alias') m.userId = m.userId || uid;
    m.context = context();
    outbox = json(get('outbox'), outbox); // another tab may have sent some
    outbox.push(m);
    if (outbox.length > cfg.maxOutbox) outbox.splice(0, outbox.length - cfg.maxOutbox);
    save();
    if (outbox.length >= cfg.flushAt) flush();
    else if (!timer) timer = setTimeout(flush, cfg.flushIntervalMs);
  }

  // Sends what the outbox holds. beacon: the page is going away.
  function flush(beacon) {
    clearTimeout(timer);
    timer = 0;
    outbox = json(get('outbox'), outbox);
    if (!outbox.length || !cfg.host || (sending && !beacon)) return;
    var wait = until - new Date();
    if (wait > 0 && !beacon) { timer = setTimeout(flush, wait); return; } // backing off
    var batch = [], size = 0;
    while (batch.length < outbox.length && batch.length < 100 && size < 50000)
      size += JSON.stringify(batch[batch.length] = outbox[batch.length]).length;
    var body = JSON.stringify({ batch: batch, sentAt: now(), writeKey: cfg.writeKey }), url = cfg.host + '/v1/batch';
    var done = function (ok) {
      sending = 0;
      if (!ok) { // network error, 429, 5xx: keep them, try again later
        backoff = Math.min(backoff ? backoff * 2 : 1000, 60000);
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
    };
    if (beacon && nav.sendBeacon) {
      // Queued by the browser, delivered after the page is gone. If it ever
      // arrives twice (the outbox resends), the server dedupes by messageId.
      if (nav.sendBeacon(url, new Blob([body], { type: 'text/plain' }))) done(1);
      return;
    }
    sending = 1;
    w.fetch(url, { method: 'POST', body: body, headers: { 'Content-Type': 'text/plain' }, keepalive: size < 60000, credentials: 'omit' })
      .then(function (r) { done(r.ok || (r.status >= 400 && r.status < 500 && r.status != 429)); }, function () { done(0); });
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
    reset: function () { put('uid', uid = null); put('traits', null); traits = {}; put('session', null); setAid(uuid()); },
    flush: function () { flush(); },
    anonymousId: function () { return aid; },
    optOut: function () { put('optout', '1'); outbox = []; save(); },
    optIn: function () { put('optout', null); }
  };
  function spaPage() { if (loc.href != lastUrl) api.page(); }

  // <script src=".../sillage.js" data-write-key="..."> configures itself.
  var me = d.currentScript, wk = me && me.getAttribute('data-write-key');
  if (me && me.src) cfg.host = me.src.replace(/\/sillage\.js(\?.*)?$/, '');
  w.sillage = api;
  if (wk) {
    api.init({ writeKey: wk });
    if (me.getAttribute('data-auto-page') != 'false') api.page();
  }
  for (var i = 0; i < queued.length; i++) {
    var c = queued[i];
    if (api[c[0]]) api[c[0]].apply(api, [].slice.call(c, 1));
  }
})(window, document);
