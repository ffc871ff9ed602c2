#!/usr/bin/env bash
# bench/tag-size.sh - sillage.js's size (minified by the build, gzipped -9),
# and its optional IAB TCF adapter's,
# beside two anchors fetched from the npm registry into a temporary
# directory: Segment's analytics.js 2.0 browser bundle
# (@segment/analytics-next, dist/umd/standalone.js, as published) and
# Plausible's npm tracker (plausible-tracker: its module files, each
# minified with the same terser settings, then gzipped, summed).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/sillage.min.js ] && [ -f build/sillage-tcf.min.js ] || ./scripts/build build >/dev/null
T=$(mktemp -d /tmp/sl-tagsize-XXXXXX)
trap 'rm -rf "$T"' EXIT
(cd "$T" && npm pack --silent @segment/analytics-next plausible-tracker >/dev/null 2>&1 \
  && for f in *.tgz; do mkdir -p "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done)
node --input-type=module - "$T" <<'JS'
import { readFileSync, readdirSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { createRequire } from 'node:module';
const require = createRequire(process.cwd() + '/package.json');
const { minify } = require('terser');
const T = process.argv[2];
const gz = (b) => gzipSync(b, { level: 9 }).length;
const row = (name, min, g) => console.log(`| ${name} | ${min.toLocaleString('en')} | ${g.toLocaleString('en')} |`);
console.log('| script | minified bytes | gzipped bytes |\n|---|---:|---:|');
const ours = readFileSync('build/sillage.min.js');
row('sillage.js (this repo)', ours.length, gz(ours));
const tcf = readFileSync('build/sillage-tcf.min.js');
row('sillage-tcf.js, the optional IAB TCF adapter (loaded beside it)', tcf.length, gz(tcf));
const seg = readdirSync(T).find((d) => d.startsWith('segment-analytics-next-') && !d.endsWith('.tgz'));
const s = readFileSync(`${T}/${seg}/package/dist/umd/standalone.js`);
row(`Segment analytics.js 2.0 (${seg.replace('segment-', '@segment/')}, standalone.js)`, s.length, gz(s));
const pl = readdirSync(T).find((d) => d.startsWith('plausible-tracker-') && !d.endsWith('.tgz'));
let pmin = 0, pgz = 0;
for (const f of ['index.js', 'lib/request.js', 'lib/tracker.js']) {
  const r = await minify(readFileSync(`${T}/${pl}/package/build/module/${f}`, 'utf8'), { module: true, compress: { passes: 2 }, mangle: true });
  pmin += r.code.length; pgz += gz(r.code);
}
row(`Plausible (${pl}, module files)`, pmin, pgz);
JS
