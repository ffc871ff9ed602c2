/* sillage-tcf.js - optional, outside the core tag: passes what an IAB TCF v2
 * consent platform (the page's __tcfapi) says about the visitor's choice to
 * sillage.consent(), on every page, when the platform has loaded the stored
 * choice ("tcloaded") and each time the visitor makes one
 * ("useractioncomplete"). Load it after the sillage snippet (docs/TAG.md,
 * "IAB TCF"); loaded before, its calls wait in the snippet's queue.
 *
 * window.sillageTcf, read once at load, may set:
 *   categories  {name: [TCF purpose ids]}: a category is granted when every
 *               purpose listed has consent (default below);
 *   publisher   true: read the publisher's own purposes (tcData.publisher)
 *               instead of the purposes' consents (tcData.purpose);
 *   vendor      a Global Vendor List id that must also have consent.
 * Where GDPR does not apply (tcData.gdprApplies === false) every category
 * is granted. */
(function (w) {
  var o = w.sillageTcf || {};
  var cats = o.categories || { analytics: [1, 8], marketing: [1, 3, 4] }, pub = o.publisher, ven = o.vendor;

  function has(tc, purposes) {
    if (tc.gdprApplies === false) return true;
    var given = ((pub ? tc.publisher : tc.purpose) || {}).consents || {};
    if (ven && ((tc.vendor || {}).consents || {})[ven] !== true) return false;
    for (var i = 0; i < purposes.length; i++) if (given[purposes[i]] !== true) return false;
    return purposes.length > 0;
  }

  function listen() {
    w.__tcfapi('addEventListener', 2, function (tc, ok) {
      if (!ok || !tc || (tc.eventStatus !== 'tcloaded' && tc.eventStatus !== 'useractioncomplete')) return;
      var choice = {};
      for (var k in cats) choice[k] = has(tc, cats[k]);
      var s = w.sillage = w.sillage || [];
      if (s.consent) s.consent(choice);
      else s.push(['consent', choice]); /* no snippet yet: the tag's queue */
    });
  }

  /* a platform's stub usually defines __tcfapi first thing in the page; if
   * it comes later, look for it for ten seconds */
  var tries = 0;
  (function look() {
    if (typeof w.__tcfapi === 'function') listen();
    else if (++tries <= 100) setTimeout(look, 100);
  })();
})(window);
