// console.js - the operator's console (console.html). A file of its own, not
// an inline script, so the page's Content-Security-Policy can forbid every
// inline script (issue 21, I1).
// The admin token lives in this page's memory only: never in a URL (proxies
// log them), never in localStorage (any script of the origin could read it).
// Every call sends it as a header.
var $ = function (id) { return document.getElementById(id); };
var cur = null, before = null, journalNext = null, live = null, ruleSeen = {}, ruleTotal = {};
function esc(s) { return String(s == null ? '' : s).replace(/[&<>"]/g, function (c) { return '&#' + c.charCodeAt(0) + ';'; }); }
function status(s, bad) { $('status').textContent = s; $('status').className = bad ? 'err' : 'muted'; }
function api(path, opts) {
  opts = opts || {};
  opts.headers = { Authorization: 'Bearer ' + $('token').value };
  opts.cache = 'no-store';
  return fetch(path, opts).then(function (r) {
    if (r.status === 401) throw new Error('wrong admin token');
    if (r.status === 429) throw new Error('too many wrong tokens: wait a minute');
    return r.json().then(function (j) { return { status: r.status, json: j }; });
  });
}
function idPath() { return '/v1/profiles/' + encodeURIComponent(cur.kind) + '/' + encodeURIComponent(cur.id); }
function kv(o) { return Object.keys(o || {}).map(function (k) { return [k, o[k]]; }); }
function showProfile(p) {
  var ids = (p.identities || []).map(function (i) { return '<span class="chip"><b>' + esc(i.kind) + '</b> ' + esc(i.id) + '</span>'; }).join('');
  var traits = kv(p.traits).map(function (t) {
    var at = (p.traits_updated_at || {})[t[0]];
    return '<tr><td>' + esc(t[0]) + '</td><td class="mono">' + esc(JSON.stringify(t[1])) + '</td><td class="muted">' + esc(at) + '</td></tr>';
  }).join('');
  var c = p.counters || {}, k = p.consent;
  var consent = !k ? '<span class="muted">never told</span>' : kv(k.categories).map(function (x) {
    return '<span class="chip"><b>' + esc(x[0]) + '</b> ' + (x[1] ? 'granted' : 'refused') + '</span>';
  }).join('') + ' <span class="muted">' + esc(k.updated_at || '') + '</span>' +
    (k.unsubscribed ? ' <span class="chip"><b>unsubscribed</b> ' + esc(k.unsubscribed_at) + '</span>' : '');
  $('profile').innerHTML = '<h2>Profile <small class="mono">' + esc(p.id) + '</small> <button class="danger" id="erase">Erase this person</button></h2>' +
    '<div id="identities">' + ids + '</div>' +
    '<table><tbody><tr><th>first seen</th><td>' + esc(p.first_seen) + '</td><th>last seen</th><td>' + esc(p.last_seen) + '</td></tr>' +
    '<tr><th>events</th><td id="c-events">' + esc(c.events) + '</td><th>page views</th><td>' + esc(c.page_views) + '</td></tr>' +
    '<tr><th>orders</th><td>' + esc(c.orders) + '</td><th>revenue</th><td>' + esc(c.revenue) + ' ' + esc(p.currency || '') + '</td></tr>' +
    '<tr><th>consent</th><td colspan="3" id="consent">' + consent + '</td></tr></tbody></table>' +
    '<h2 style="margin-top:.8rem">Traits <small>value, and when it was set</small></h2><table><tbody id="traits">' + (traits || '<tr><td class="muted">none</td></tr>') + '</tbody></table>' +
    '<h2 style="margin-top:.8rem">Pending triggers <small>due, and what would cancel them</small></h2><table><tbody id="pending">' + pending(p.pending_triggers) + '</tbody></table>' +
    '<h2 style="margin-top:.8rem">Computed <small>as of this read (docs/COMPUTED.md)</small></h2><table><tbody id="computed">' + computed(p.computed) + '</tbody></table>' +
    '<h2 style="margin-top:.8rem">Audiences <small>this person is in (docs/AUDIENCES.md)</small></h2><div id="memberships">' +
    ((p.audiences || []).map(function (a) { return '<span class="chip">' + esc(a) + '</span>'; }).join('') || '<span class="muted">none</span>') + '</div>';
  $('erase').onclick = erase;
}
// The person's computed fields, RFM first (a flat list: rfm.segment...).
function computed(c) {
  var rows = [];
  if (c && c.rfm) kv(c.rfm).forEach(function (x) { rows.push(['rfm.' + x[0], x[1]]); });
  kv(c).forEach(function (x) { if (x[0] !== 'rfm') rows.push(x); });
  if (!rows.length) return '<tr><td class="muted">none configured</td></tr>';
  return rows.map(function (x) {
    return '<tr><td>' + esc(x[0]) + '</td><td class="mono">' + esc(JSON.stringify(x[1])) + '</td></tr>';
  }).join('');
}
// Customers per RFM segment, over every person with computed state.
function loadRfm() {
  api('/v1/computed/rfm/distribution').then(function (r) {
    if (r.status !== 200) { $('rfm-section').hidden = true; return; }
    $('rfm-section').hidden = false;
    var v = r.json.values || {};
    $('rfm').innerHTML = Object.keys(v).sort(function (a, b) { return v[b] - v[a]; }).map(function (s) {
      return '<tr><td>' + esc(s) + '</td><td>' + esc(v[s]) + '</td></tr>';
    }).join('') || '<tr><td class="muted">nobody yet</td></tr>';
  }).catch(function () { $('rfm-section').hidden = true; });
}
// The audiences, their KPIs and the last days' history (docs/AUDIENCES.md).
function loadAudiences() {
  api('/v1/audiences').then(function (r) {
    var list = r.status === 200 ? r.json.audiences || [] : [];
    $('aud-section').hidden = list.length === 0;
    if (!list.length) return;
    return Promise.all(list.map(function (a) {
      return api('/v1/audiences/' + encodeURIComponent(a.name) + '/kpis?days=7&limit=1').then(function (k) {
        return k.status === 200 ? k.json.history : [];
      });
    })).then(function (hist) {
      $('audiences').innerHTML = list.map(function (a, i) {
        var h = (hist[i] || []).map(function (d) {
          return esc(d.day.slice(5)) + ': ' + esc(d.members) + ' (+' + esc(d.entered) + ' −' + esc(d.exited) + ')';
        }).join(', ');
        return '<tr data-audience="' + esc(a.name) + '"><td>' + esc(a.name) + (a.building ? ' <small class="muted">building</small>' : '') +
          '</td><td>' + esc(a.members) + '</td><td>' + esc(a.identified) + '</td><td>' + esc(a.with_email) +
          '</td><td>' + esc(a.orders) + '</td><td>' + esc(a.revenue) + '</td><td>' + esc(a.aov) + '</td><td>' +
          esc(a.revenue_per_member) + '</td><td class="muted">' + (h || 'no move') + '</td></tr>';
      }).join('');
    });
  }).catch(function () { $('aud-section').hidden = true; });
}
// An event rule's triggers waiting for their delay (or for a login).
function pending(list) {
  if (!list || !list.length) return '<tr><td class="muted">none</td></tr>';
  return list.map(function (x) {
    return '<tr><td><b>' + esc(x.rule) + '</b></td><td>' + esc(x.due) + (x.waiting_for_login ? ' <span class="chip">waiting for a login</span>' : '') +
      '</td><td>' + (x.cancelled_by ? 'unless <b>' + esc(x.cancelled_by) + '</b>' : '<span class="muted">nothing cancels it</span>') + '</td></tr>';
  }).join('');
}
function showEvents(page, append) {
  if (!append) $('events').innerHTML = '';
  page.events.forEach(function (e) {
    var tr = document.createElement('tr');
    tr.innerHTML = '<td class="muted">' + esc(e.timestamp) + '</td><td>' + esc(e.type) + '</td><td>' +
      '<details><summary>' + esc(e.event || e.name || (e.type === 'identify' ? 'traits' : e.type === 'alias' ? e.previousId + ' → ' + e.userId : '')) +
      '</summary><pre>' + esc(JSON.stringify(e, null, 2)) + '</pre></details></td><td class="mono">' + esc(e.userId || e.anonymousId) + '</td>';
    $('events').appendChild(tr);
  });
  before = page.next;
  $('older').hidden = !before;
  $('timeline').hidden = false;
}
function ident(i) { return i ? i.kind + ' ' + i.id : ''; }
// The journal comes a page at a time (newest first); a refusal entry counts
// every claim of that kind on the person's identifiers and names the latest.
function showJournal(j, append) {
  var rows = (j.merges || []).concat(j.refused || []).sort(function (a, b) { return a.at < b.at ? 1 : -1; });
  var html = rows.map(function (m) {
    var what = m.type === 'refused' ? ident(m.identifier) : (m.identifiers || []).map(ident).join(', ');
    var times = m.count > 1 ? ' <span class="muted">×' + esc(m.count) + ', first ' + esc(m.first_at) + '</span>' : '';
    return '<div class="' + (m.type === 'refused' ? 'err' : '') + '"><b>' + esc(m.type) + '</b> ' + esc(m.at) + ' — ' + esc(m.reason) +
      (what ? ' <span class="mono">' + esc(what) + '</span>' : '') + times + '</div>';
  }).join('');
  if (append) $('merges').insertAdjacentHTML('beforeend', html);
  else $('merges').innerHTML = html || '<p class="muted">No merge and no refusal: this person was never joined to another.</p>';
  journalNext = j.next || null;
  $('older-journal').hidden = !journalNext;
  $('journal').hidden = false;
}
function trigLine(t) {
  return '<div class="trig"><b>' + esc(t.rule || t.type) + '</b> <span class="muted">' + esc(t.type) + ' · #' + esc(t.seq) + ' · ' + esc(t.at) + '</span>' +
    (t.profile ? ' · <span class="mono">' + esc(t.profile.email || t.profile.user_id || t.profile.id) + '</span>' : '') +
    '<details><summary>payload</summary><pre>' + esc(JSON.stringify(t.data, null, 2)) + '</pre></details></div>';
}
// The feed is one sequence for every person: its pages are read (at most
// 5,000 triggers) and this person's kept.
function personTriggers(pid) {
  var found = [], after = 0, pages = 0;
  (function next() {
    return api('/v1/triggers?after=' + after + '&limit=1000&wait_ms=0').then(function (r) {
      (r.json.triggers || []).forEach(function (t) { if (t.profile && t.profile.id === pid) found.push(t); });
      if ((r.json.triggers || []).length === 1000 && ++pages < 5) { after = r.json.next; return next(); }
      $('ptrig').innerHTML = found.length ? found.reverse().map(trigLine).join('') : '<p class="muted">None.</p>';
      $('person-triggers').hidden = false;
    });
  })();
}
function find(e) {
  if (e) e.preventDefault();
  var kind = $('kind-other').value.trim() || $('kind').value, id = $('ident').value.trim();
  cur = { kind: kind, id: id };
  status('looking up…');
  api(idPath()).then(function (r) {
    if (r.status === 404) { status('no profile has ' + kind + ' ' + id, true); return; }
    if (r.status !== 200) { status(r.json.error || 'HTTP ' + r.status, true); return; }
    status('');
    showProfile(r.json);
    personTriggers(r.json.id);
    return Promise.all([api(idPath() + '/events?limit=20').then(function (t) { showEvents(t.json, false); }),
                        api(idPath() + '/merges?limit=50').then(function (m) { showJournal(m.json, false); })]);
  }).catch(function (err) { status(err.message, true); });
}
function erase() {
  if (!confirm('Erase ' + cur.kind + ' ' + cur.id + ': every event, identity, journal entry and trigger of this person? This cannot be undone.')) return;
  api(idPath(), { method: 'DELETE' }).then(function (r) {
    if (r.status !== 200) { status(r.json.error || 'HTTP ' + r.status, true); return; }
    var x = r.json.erased;
    $('profile').innerHTML = '<h2>Profile</h2><p id="erased">Erased person <span class="mono">' + esc(x.person) + '</span>: ' + x.events + ' events, ' +
      x.identities + ' identities, ' + x.journal_entries + ' journal entries, ' + x.triggers + ' triggers.</p>';
    ['timeline', 'journal', 'person-triggers'].forEach(function (s) { $(s).hidden = true; });
    status('erased');
    loadRecent(false);
  }).catch(function (err) { status(err.message, true); });
}
// GET /v1/profiles: persons by their latest activity, a page at a time.
var recentNext = null;
function loadRecent(more) {
  api('/v1/profiles?limit=20' + (more && recentNext ? '&before=' + encodeURIComponent(recentNext) : '')).then(function (r) {
    if (r.status !== 200) { $('recent').textContent = r.json.error || 'HTTP ' + r.status; return; }
    if (!more) $('recent').innerHTML = '';
    $('recent').className = '';
    r.json.profiles.forEach(function (p) {
      var id = (p.identities || [])[0] || {}, a = document.createElement('a');
      var em = (p.identities || []).filter(function (i) { return i.kind === 'email'; })[0];
      a.href = '#'; a.className = 'recent-item'; a.style.display = 'block';
      a.textContent = (em ? em.id : p.user_id || id.id || p.id) + ' · ' + (p.last_seen || '');
      a.onclick = function (e) {
        e.preventDefault();
        $('kind-other').value = p.user_id ? '' : id.kind; $('kind').value = p.user_id ? 'user_id' : 'email';
        $('ident').value = p.user_id || id.id; find();
      };
      $('recent').appendChild(a);
    });
    if (!$('recent').children.length) $('recent').innerHTML = '<span class="muted">no profile yet</span>';
    recentNext = r.json.next;
    $('more').hidden = !recentNext;
  }).catch(function (err) { $('recent').textContent = err.message; });
}
function showRules() {
  $('rules').innerHTML = Object.keys(ruleTotal).sort().map(function (r) {
    return '<tr><td>' + esc(r) + '</td><td class="rule-new">' + (ruleSeen[r] || 0) + '</td><td>' + ruleTotal[r] + '</td></tr>';
  }).join('') || '<tr><td class="muted">no rule has fired yet</td></tr>';
}
// Per-rule totals from /metrics (sillage_triggers_fired_total{rule=...}).
function loadTotals() {
  return fetch('/metrics', { headers: { Authorization: 'Bearer ' + $('token').value }, cache: 'no-store' })
    .then(function (r) { return r.ok ? r.text() : ''; }).then(function (text) {
      text.split('\n').forEach(function (l) {
        var m = /^sillage_triggers_fired_total\{rule="([^"]*)"\} (\d+)/.exec(l);
        if (m) ruleTotal[m[1]] = Number(m[2]);
      });
      showRules();
    });
}
// The live feed, read with fetch() so that the token goes as a header.
function connect() {
  if (live) live.abort();
  var mine = live = new AbortController();
  $('feed').textContent = 'connecting…';
  loadTotals();
  sillageStream('/v1/triggers/stream', $('token').value, mine.signal, function () {
    $('feed').innerHTML = '<p class="muted" id="feed-empty">Live: triggers appear here as the rules fire.</p>';
  }, function (type, data) {
    var t = JSON.parse(data), div = document.createElement('div');
    div.innerHTML = trigLine(t);
    $('feed').insertBefore(div.firstChild, $('feed').firstChild);
    if (t.rule && t.type.indexOf('audience_') !== 0) { // profile_erased belongs to no rule; audiences' moves are no rule's
      ruleSeen[t.rule] = (ruleSeen[t.rule] || 0) + 1;
      ruleTotal[t.rule] = (ruleTotal[t.rule] || 0) + 1;
      showRules();
    }
  })
    .catch(function (e) {
      if (mine !== live) return;
      if (e.status === 401) e.message = 'wrong admin token';
      $('feed').textContent = 'disconnected (' + e.message + ')';
      if (!/token/.test(e.message)) setTimeout(function () { if (mine === live) connect(); }, 3000);
    });
}
$('find').onsubmit = find;
$('older').onclick = function () { api(idPath() + '/events?limit=20&before=' + encodeURIComponent(before)).then(function (t) { showEvents(t.json, true); }); };
$('older-journal').onclick = function () { api(idPath() + '/merges?limit=50&before=' + encodeURIComponent(journalNext)).then(function (m) { showJournal(m.json, true); }); };
// (a change event comes again when the field loses focus: same token, nothing to redo)
var tokenUsed = null;
$('token').onchange = function () {
  if ($('token').value === tokenUsed) return;
  tokenUsed = $('token').value;
  connect();
  loadRecent(false);
  loadRfm();
  loadAudiences();
};
$('more').onclick = function () { loadRecent(true); };
showRules();
