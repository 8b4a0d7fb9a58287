-- wrk script for the benchmarks: replays prepared requests, counts statuses, prints JSON.
--
--   wrk -t2 -c64 -d10s --latency -s bench/lua/requests.lua http://host:port/ -- requests.tsv
--
-- requests.tsv has one request per line: METHOD <tab> PATH <tab> API KEY (or empty) <tab> JSON BODY (or empty).
-- Each thread walks the list from its own starting point, one request after the
-- other, so consecutive requests carry different keys (a key's rate limit or a
-- single cached entry cannot carry the figure). done() prints one line
-- "WRK_JSON {...}" with the counts, the latency percentiles and the status codes.

local threads = {}
local started = 0

function setup(thread)
  started = started + 1
  thread:set("offset", started)
  table.insert(threads, thread)
end

local prepared = {}
local count = 0
local index = 0
statuses = {}

function init(args)
  for line in io.lines(args[1]) do
    local method, path, key, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t?(.*)$")
    if method then
      local headers = {}
      if key ~= "" then
        headers["Authorization"] = "Bearer " .. key
      end
      if body == "" then
        body = nil
      else
        headers["Content-Type"] = "application/json"
      end
      count = count + 1
      prepared[count] = wrk.format(method, path, headers, body)
    end
  end
  index = ((offset or 1) * 7919) % count
end

function request()
  index = index % count + 1
  return prepared[index]
end

function response(status, headers, body)
  local code = tostring(status)
  statuses[code] = (statuses[code] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses") or {}
    for code, n in pairs(counts) do
      merged[code] = (merged[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(merged) do
    table.insert(parts, string.format('"%s":%d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p95":%d,"p99":%d,"max":%d,"mean":%.1f},"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean, table.concat(parts, ",")))
end
