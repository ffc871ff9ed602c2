#!/usr/bin/env bash
# deb.sh BUILD_DIR - the Debian package, as an operator meets it: built with
# CPack from BUILD_DIR, installed with dpkg -i on this machine, its files,
# user and permissions checked, the unit verified (systemd-analyze), the
# installed binary started as the sillage user with the installed config,
# an event sent and read back, then purged: nothing left unless
# SILLAGE_KEEP_DATA=1. Needs root; skips, touching nothing, where a sillage
# package, its directories or its user exist already. /usr/share/sillage/geo.mmdb, which scripts/setup
# installs for the tests, is put back afterwards.
set -euo pipefail
B="$(cd "$1" && pwd)"
if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root"; exit 77; fi
if dpkg-query -W -f='${Status}' sillage 2>/dev/null | grep -q "ok installed"; then
  echo "SKIP: a sillage package is installed here already; not touching it"; exit 77
fi
if [ -e /etc/sillage ] || [ -e /var/lib/sillage ] || getent passwd sillage > /dev/null; then
  echo "SKIP: /etc/sillage, /var/lib/sillage or a sillage user exist here already; not touching them"; exit 77
fi
fail() { echo "FAIL: $*"; exit 1; }
check() { local what="$1" got="$2" want="$3"; [ "$got" = "$want" ] || fail "$what: got '$got', want '$want'"; echo "ok: $what = $want"; }

rm -f "$B"/sillage_*.deb
(cd "$B" && cpack -G DEB > cpack.log 2>&1) || { cat "$B/cpack.log"; fail "cpack"; }
DEB=$(ls "$B"/sillage_*.deb | head -1)
WORK=$(mktemp -d /tmp/sl-deb-XXXXXX)
GEO=/usr/share/sillage/geo.mmdb
[ -f "$GEO" ] && cp -p "$GEO" "$WORK/geo.mmdb"
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  dpkg --purge sillage > /dev/null 2>&1 || true
  # what a failed run may leave (a purge that kept the data): none of it was here before
  rm -rf /etc/sillage /var/lib/sillage
  getent passwd sillage > /dev/null && deluser --system sillage > /dev/null 2>&1
  getent group sillage > /dev/null && delgroup --system sillage > /dev/null 2>&1
  [ -f "$WORK/geo.mmdb" ] && install -D -m 0644 "$WORK/geo.mmdb" "$GEO"
  rm -rf "$WORK"
}
trap cleanup EXIT

dpkg -i "$DEB" > "$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log"; fail "dpkg -i"; }
echo "ok: dpkg -i $(basename "$DEB")"
/usr/bin/sillage version | grep -q '^sillage ' || fail "sillage version"
check "the service unit" "$(stat -c '%U:%G %a' /usr/lib/systemd/system/sillage.service)" "root:root 644"
check "the GeoIP database" "$(stat -c '%U:%G %a' /usr/share/sillage/geo.mmdb)" "root:root 644"
check "/etc/sillage" "$(stat -c '%U:%G %a' /etc/sillage)" "root:sillage 750"
check "the configuration" "$(stat -c '%U:%G %a' /etc/sillage/sillage.json)" "root:sillage 640"
check "/var/lib/sillage" "$(stat -c '%U:%G %a' /var/lib/sillage)" "sillage:sillage 750"
check "the sillage user (home, shell)" "$(getent passwd sillage | cut -d: -f6,7)" "/var/lib/sillage:/usr/sbin/nologin"
# generated secrets: not a dpkg conffile (Debian Policy 10.7.3), made by postinst from the template
dpkg-query -W -f='${Conffiles}\n' sillage | grep -q 'sillage.json' && fail "sillage.json must not be a conffile"
[ -f /usr/share/sillage/sillage.json.example ] || fail "no template"
echo "ok: /etc/sillage/sillage.json made from /usr/share/sillage/sillage.json.example"
grep -q '@WRITE_KEY@\|@ADMIN_TOKEN@' /etc/sillage/sillage.json && fail "the secrets were not generated"
CONF="$(cat /etc/sillage/sillage.json)"
WK=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sources"][0]["write_key"])' /etc/sillage/sillage.json)
AT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin_token"])' /etc/sillage/sillage.json)
[ ${#WK} -ge 20 ] && [ ${#AT} -ge 32 ] || fail "short secrets: ${#WK}, ${#AT}"
echo "ok: a write key and an admin token were generated"
# a second install (an upgrade to the same version) keeps them
dpkg -i "$DEB" > "$WORK/dpkg2.log" 2>&1 || { cat "$WORK/dpkg2.log"; fail "dpkg -i again"; }
[ "$(cat /etc/sillage/sillage.json)" = "$CONF" ] || fail "reinstalling changed the configuration"
echo "ok: reinstalling keeps the configuration"

systemd-analyze verify /usr/lib/systemd/system/sillage.service > "$WORK/verify.log" 2>&1 \
  || { cat "$WORK/verify.log"; fail "systemd-analyze verify"; }
echo "ok: systemd-analyze verify"
for k in 'ExecStartPre=/usr/bin/sillage check-config' 'ExecReload=/bin/kill -HUP $MAINPID' 'StateDirectory=sillage' \
         'ProtectSystem=strict' 'NoNewPrivileges=true' 'LimitNOFILE=65536' 'User=sillage'; do
  grep -qF "$k" /usr/lib/systemd/system/sillage.service || fail "the unit lacks $k"
done
echo "ok: the unit checks the config, reloads on SIGHUP, is hardened"

# the installed binary, as the service runs it (user, config), on a free port
runuser -u sillage -- /usr/bin/sillage check-config -c /etc/sillage/sillage.json > "$WORK/check.log" 2>&1 \
  || { cat "$WORK/check.log"; fail "check-config as sillage"; }
runuser -u sillage -- /usr/bin/sillage serve -c /etc/sillage/sillage.json --listen 127.0.0.1:0 2> "$WORK/serve.log" &
PID=$!
for _ in $(seq 100); do grep -q 'listening on' "$WORK/serve.log" && break; sleep 0.1; done
PORT=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/serve.log")
[ -n "$PORT" ] || { cat "$WORK/serve.log"; fail "serve did not start"; }
grep -q 'world-readable' "$WORK/serve.log" && fail "the config is said to be world-readable"
URL="http://127.0.0.1:$PORT"
ans=$(curl -s -u "$WK:" -H 'Content-Type: application/json' \
  -d '{"userId":"deb-u1","event":"Installed","messageId":"deb-m1"}' "$URL/v1/track")
check "the answer to a track" "$ans" '{"success":true}'
check "a wrong key" "$(curl -s -o /dev/null -w '%{http_code}' -u nope: -d '{"userId":"x","event":"E"}' "$URL/v1/track")" "401"
prof=$(curl -s -H "Authorization: Bearer $AT" "$URL/v1/profiles/user_id/deb-u1")
echo "$prof" | python3 -c 'import json,sys; p=json.load(sys.stdin); assert p["counters"]["events"]==1, p' \
  || fail "the profile: $prof"
echo "ok: the event is on the profile"
kill "$PID"; wait "$PID" || true; PID=""
runuser -u sillage -- /usr/bin/sillage export -c /etc/sillage/sillage.json | grep -q '"messageId":"deb-m1"' \
  || fail "export as sillage"
echo "ok: stored in /var/lib/sillage ($(du -sh /var/lib/sillage | cut -f1))"

# purge keeping the data when asked, then without
SILLAGE_KEEP_DATA=1 dpkg --purge sillage > "$WORK/purge1.log" 2>&1 || { cat "$WORK/purge1.log"; fail "purge (keep)"; }
[ -e /usr/bin/sillage ] && fail "purge left the binary"
[ -f /var/lib/sillage/data.mdb ] || fail "SILLAGE_KEEP_DATA=1 did not keep the data"
[ "$(cat /etc/sillage/sillage.json)" = "$CONF" ] || fail "SILLAGE_KEEP_DATA=1 did not keep the configuration"
echo "ok: purge with SILLAGE_KEEP_DATA=1 keeps /var/lib/sillage and the configuration that matches it"
dpkg -i "$DEB" > "$WORK/dpkg3.log" 2>&1 || { cat "$WORK/dpkg3.log"; fail "dpkg -i after a kept purge"; }
[ "$(cat /etc/sillage/sillage.json)" = "$CONF" ] || fail "reinstalling after a kept purge changed the secrets"
echo "ok: reinstalling finds its data and keys again"
dpkg --purge sillage > "$WORK/purge2.log" 2>&1 || { cat "$WORK/purge2.log"; fail "purge"; }
for p in /usr/bin/sillage /etc/sillage /var/lib/sillage /usr/lib/systemd/system/sillage.service; do
  [ -e "$p" ] && fail "purge left $p"
done
getent passwd sillage > /dev/null && fail "purge left the sillage user"
echo "ok: purge leaves no file, no data, no user"
echo "deb: ok"
