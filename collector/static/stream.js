// stream.js - the Server-Sent Events reader of /console and /debug, served
// at /console/stream.js. It reads with fetch() so that the admin token goes
// as a header (EventSource cannot send one).
// sillageStream(path, token, signal, opened, onEvent): opened() (may be
// null) once the stream is accepted, onEvent(type, data) for each event
// (type "message" when it names none; its data lines joined). The promise
// rejects when the stream ends, is aborted or is refused; a refusal's Error
// carries the HTTP status.
function sillageStream(path, token, signal, opened, onEvent) {
  return fetch(path, { headers: { Authorization: 'Bearer ' + token }, signal: signal, cache: 'no-store' })
    .then(function (res) {
      if (!res.ok || !res.body) {
        var e = new Error('HTTP ' + res.status);
        e.status = res.status;
        throw e;
      }
      if (opened) opened();
      var reader = res.body.getReader(), dec = new TextDecoder(), buf = '';
      return (function pump() {
        return reader.read().then(function (r) {
          if (r.done) throw new Error('stream ended');
          buf += dec.decode(r.value, { stream: true });
          var i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            var type = 'message', data = [];
            buf.slice(0, i).split('\n').forEach(function (l) {
              if (l.indexOf('event:') === 0) type = l.slice(6).trim();
              else if (l.indexOf('data:') === 0) data.push(l.slice(5).replace(/^ /, ''));
            });
            buf = buf.slice(i + 2);
            // one entry the page cannot read (not JSON) must not end the live view
            if (data.length) {
              try { onEvent(type, data.join('\n')); } catch (e) { console.warn('sillage: event skipped:', e); }
            }
          }
          return pump();
        });
      })();
    });
}
