-- wrk script: POST /v1/accounts/{id}/deposits with a fresh Idempotency-Key
-- per request (run id, thread id, counter). Env: BENCH_ACCOUNTS (file of
-- account ids), BENCH_KEY (API key), BENCH_RUN (unique run tag).
-- Counts non-202 answers per thread; done() prints one BENCHJSON line.
local threads = {}
local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end

function init(args)
  accounts = {}
  for line in io.lines(os.getenv("BENCH_ACCOUNTS")) do
    if #line == 36 then accounts[#accounts + 1] = line end
  end
  auth = "Bearer " .. os.getenv("BENCH_KEY")
  run = os.getenv("BENCH_RUN")
  counter = 0
  bad = 0
  body = '{"amount":1,"currency":"EUR","reference":"bench"}'
end

function request()
  counter = counter + 1
  local a = accounts[(counter % #accounts) + 1]
  return wrk.format("POST", "/v1/accounts/" .. a .. "/deposits", {
    ["Authorization"] = auth,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = run .. "-" .. tid .. "-" .. counter,
  }, body)
end

function response(status, headers, body)
  if status ~= 202 then bad = bad + 1 end
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
