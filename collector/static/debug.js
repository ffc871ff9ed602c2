// debug.js - the /debug page (debug.html): the live events and triggers.
// A file of its own, not an inline script, so the page's
// Content-Security-Policy can forbid every inline script (issue 21, I1).
// The admin token stays in this page's memory: never in the URL (proxies log
// URLs), never in localStorage (any script of this origin, such as the demo
// shop's, could read it). The stream is read with fetch(), which can send the
// token as a header, where EventSource cannot.
var tokenBox = document.getElementById('token'), list = document.getElementById('list'), n = 0, ctl;
function esc(s) { return String(s == null ? '' : s).replace(/[&<>"]/g, function (c) { return '&#' + c.charCodeAt(0) + ';'; }); }
function state(s, cls) { var e = document.getElementById('state'); e.textContent = s; e.className = cls || ''; }
function show(d) {
  var m = d.message, c = m.context || {}, loc = c.location || {};
  var what = m.event || m.name || (m.type === 'identify' ? JSON.stringify(m.traits || {}) : m.type === 'alias' ? m.previousId + ' → ' + m.userId : '');
  var div = document.createElement('div');
  div.className = 'ev ' + m.type;
  div.innerHTML = '<div class="top"><span class="type">' + esc(m.type) + '</span><span class="what">' + esc(what) + '</span>' +
    '<span class="who">' + (m.userId ? 'user <b>' + esc(m.userId) + '</b> · ' : '') + 'anon ' + esc(m.anonymousId) + '</span>' +
    '<span>→ profile <span class="person">' + esc(d.person || 'none') + '</span>' +
    (d.rfm_segment ? ' · RFM <span class="segment">' + esc(d.rfm_segment) + '</span>' : '') + '</span></div>' +
    '<div class="enr">received ' + esc(m.receivedAt) + ' · timestamp ' + esc(m.timestamp) +
    (c.ip ? ' · ip ' + esc(c.ip) : '') + (loc.country ? ' · ' + esc([loc.city, loc.country].filter(Boolean).join(', ')) : '') +
    (c.page && c.page.path ? ' · ' + esc(c.page.path) : '') + '</div>' +
    '<details><summary>stored message</summary><pre>' + esc(JSON.stringify(m, null, 2)) + '</pre></details>';
  list.insertBefore(div, list.firstChild);
  while (list.children.length > 300) list.removeChild(list.lastChild);
  document.getElementById('empty').style.display = 'none';
  document.getElementById('count').textContent = ++n + ' events';
}
// A trigger from the feed (docs/TRIGGERS.md, "Payload").
var nt = 0;
function showTrigger(t) {
  var p = t.profile || {}, div = document.createElement('div');
  div.className = 'ev trigger';
  div.innerHTML = '<div class="top"><span class="type">trigger · ' + esc(t.type) + '</span><span class="what">' + esc(t.rule) + '</span>' +
    '<span class="who">' + (p.user_id ? 'user <b>' + esc(p.user_id) + '</b> · ' : '') + (p.email ? esc(p.email) + ' · ' : '') + '#' + esc(t.seq) + '</span>' +
    '<span>→ profile <span class="person">' + esc(p.id || 'none') + '</span></span></div>' +
    '<div class="enr">fired ' + esc(t.at) + (t.cause ? ' · caused by ' + esc(t.cause.messageId) : ' · by a timer') + '</div>' +
    '<details open><summary>payload</summary><pre>' + esc(JSON.stringify(t.data, null, 2)) + '</pre></details>';
  list.insertBefore(div, list.firstChild);
  while (list.children.length > 300) list.removeChild(list.lastChild);
  document.getElementById('empty').style.display = 'none';
  document.getElementById('tcount').textContent = ++nt + ' triggers';
}
// Reads an event stream (/console/stream.js): stitched events and triggers;
// opened() once it is accepted.
function read(path, signal, opened) {
  return sillageStream(path, tokenBox.value, signal, function () {
    state('live', 'live');
    if (opened) opened();
  }, function (type, data) {
    if (type === 'event') show(JSON.parse(data));
    else if (type === 'trigger') showTrigger(JSON.parse(data));
  }).catch(function (e) {
    if (e.status === 401) e.message = 'wrong token';
    else if (e.status === 429) e.message = 'too many wrong tokens, wait a minute';
    throw e;
  });
}
function connect() {
  if (ctl) ctl.abort();
  var mine = ctl = new AbortController();
  state('connecting');
  // the events; once the token is known good, the trigger feed from now on
  // (a node that derives nothing has none: 404, ignored). One wrong token
  // counts once against the admin limit.
  read('/debug/stream', mine.signal, function () { read('/v1/triggers/stream', mine.signal).catch(function () {}); })
    .catch(function (e) {
      if (mine !== ctl) return; // replaced by a newer connection
      state('disconnected (' + (e && e.message || 'error') + ')', 'down');
      if (!/token/.test(e && e.message)) setTimeout(function () { if (mine === ctl) connect(); }, 3000);
    });
}
// (a change event comes again when the field loses focus: same token, no reconnection)
var tokenUsed = null;
tokenBox.onchange = function () {
  if (tokenBox.value === tokenUsed) return;
  tokenUsed = tokenBox.value;
  connect();
};
if (tokenBox.value) connect();
