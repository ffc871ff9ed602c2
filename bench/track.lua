-- wrk script: single-event POST /v1/track, ~600 bytes, a unique messageId per
-- request (so every request is a real durable write, not a dedupe hit).
-- The same stream goes to nginx for the baseline.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  thread_id = tid or 0
end

local pad = string.rep("x", 96)
local ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"

function request()
  counter = counter + 1
  local id = string.format("bench-%d-%d-%d", thread_id, counter, os.time())
  local body = string.format(
    '{"type":"track","event":"Product Added","anonymousId":"anon-%d","messageId":"%s",' ..
    '"properties":{"product_id":"sku-%d","name":"Linen shirt","price":49.9,"quantity":1,"currency":"EUR","category":"shirts","pad":"%s"},' ..
    '"context":{"page":{"path":"/products/linen-shirt","url":"https://shop.example/products/linen-shirt","referrer":"https://www.google.com/","title":"Linen shirt"},' ..
    '"userAgent":"%s","locale":"fr-FR"},"timestamp":"2026-11-23T10:00:00.000Z","sentAt":"2026-11-23T10:00:00.100Z"}',
    counter % 5000, id, counter % 300, pad, ua)
  return wrk.format("POST", "/v1/track", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Basic YmVuY2g6",  -- "bench:"
  }, body)
end
