-- wrk script: POSTs the benchmark's CDS Hooks request, each with its own pre-minted JWT and its
-- own hookInstance, and writes a JSON summary.
-- Environment: BENCH_BODY (request file), BENCH_TOKENS (one JWT per line), BENCH_PATH,
-- BENCH_THREADS (wrk -t), BENCH_OUT (summary file), BENCH_WRAP=1 lets tokens repeat (for a
-- service that verifies none; offramp would refuse a replay).
local placeholder = "00000000-0000-4000-8000-000000000000"
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local head, tail, tokens, n
-- Global, not local: done() reads it per thread with thread:get, which sees globals only.
exhausted = 0

function init(args)
  local nthreads = tonumber(os.getenv("BENCH_THREADS"))
  local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  local body = f:read("*a")
  f:close()
  local s, e = string.find(body, placeholder, 1, true)
  head, tail = body:sub(1, s - 1), body:sub(e + 1)
  -- Each thread takes every nthreads-th token, so no two threads send the same one.
  tokens, n = {}, 0
  local i = 0
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    if i % nthreads == id then
      table.insert(tokens, line)
    end
    i = i + 1
  end
  wrap = os.getenv("BENCH_WRAP") == "1"
end

function request()
  n = n + 1
  local t = tokens[n]
  if t == nil then
    if not wrap then
      exhausted = exhausted + 1
    end
    t = tokens[(n - 1) % #tokens + 1]
  end
  local body = head .. string.format("%08x-0000-4000-8000-%012x", id, n) .. tail
  return wrk.format("POST", os.getenv("BENCH_PATH"), {
    ["Authorization"] = "Bearer " .. t,
    ["Content-Type"] = "application/json",
  }, body)
end

function done(summary, latency, requests)
  local ex = 0
  for _, t in ipairs(threads) do
    ex = ex + (t:get("exhausted") or 0)
  end
  local e = summary.errors
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  out:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"tokens_exhausted":%d,"latency_us":{"mean":%.1f,"p50":%d,' ..
    '"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, ex, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
  out:close()
end
