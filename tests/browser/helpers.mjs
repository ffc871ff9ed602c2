// helpers.mjs - what the browser tests share: Debian's chromium, the admin
// API of a running server, and waiting for a condition (never a fixed sleep).
import { chromium } from 'playwright-core';
import { ADMIN } from '../integration/helpers.mjs';

export function launchChromium() {
  return chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
}

// An admin route of srv: {status, json} (json only for a 200).
export async function adminApi(srv, path, opts = {}) {
  const res = await fetch(srv.url + path, { ...opts, headers: { Authorization: 'Bearer ' + ADMIN, ...(opts.headers || {}) } });
  return { status: res.status, json: res.status === 200 ? await res.json() : null };
}

// fn() until it returns something truthy, at most ms; its last result.
export async function until(fn, ms = 10000, every = 100) {
  const end = Date.now() + ms;
  let v;
  while (Date.now() < end) {
    if ((v = await fn())) return v;
    await new Promise((r) => setTimeout(r, every));
  }
  return v;
}

// The tag's loader snippet (docs/TAG.md) loading /sillage.js from the page's own origin.
export const SNIPPET = '!function(w,d,s){var a=w.sillage=w.sillage||[];if(a.v)return;["init","page","track","identify","alias","reset","flush","optOut","optIn","consent"].forEach(function(m){a[m]=function(){a.push([m].concat([].slice.call(arguments)))}});var e=d.createElement("script");e.async=1;e.src=s;d.head.appendChild(e)}(window,document,"/sillage.js");';
