-- wrk script: GET one path, optionally with If-None-Match; counts answers
-- whose status is not BENCH_EXPECT. Env: BENCH_PATH, BENCH_KEY, BENCH_EXPECT,
-- BENCH_INM (optional If-None-Match value). done() prints one BENCHJSON line.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local headers = { ["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY") }
  local inm = os.getenv("BENCH_INM")
  if inm ~= nil and inm ~= "" then headers["If-None-Match"] = inm end
  req = wrk.format("GET", os.getenv("BENCH_PATH"), headers)
  expect = tonumber(os.getenv("BENCH_EXPECT"))
  bad = 0
end

function request()
  return req
end

function response(status, headers, body)
  if status ~= expect then bad = bad + 1 end
end

function done(summary, latency, requests)
  local non = 0
  for _, t in ipairs(threads) do non = non + t:get("bad") end
  local e = summary.errors
  io.write(string.format('BENCHJSON {"requests":%d,"ok":%d,"duration_s":%.3f,"rps":%.1f,"ok_rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"bad_status":%d,"socket_errors":%d}\n',
    summary.requests, summary.requests - non, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    (summary.requests - non) / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    non, e.connect + e.read + e.write + e.timeout))
end
