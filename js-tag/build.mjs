// build.mjs SRC OUT - minifies the tag (or its TCF adapter) with terser (npm) into OUT and prints
// its size, minified and gzipped. Without terser (no `npm install`) it copies
// SRC and says so: the server still works, the size check will not pass.
import { readFileSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { basename } from 'node:path';
import { createRequire } from 'node:module';

const [src, out] = process.argv.slice(2);
const code = readFileSync(src, 'utf8');
let min = code;
try {
  const require = createRequire(new URL('../package.json', import.meta.url));
  const { minify } = require('terser');
  const r = await minify(code, { compress: { passes: 2 }, mangle: true, format: { comments: false } });
  min = r.code;
} catch (e) {
  console.warn(`build.mjs: terser unavailable (${e.message.split('\n')[0]}); serving the tag unminified`);
}
writeFileSync(out, min);
console.log(`${basename(src)}: ${min.length} bytes minified, ${gzipSync(min, { level: 9 }).length} bytes gzipped`);
