-- wrk script: POST /v1/charges for random users (or one hot user, or the span users in
-- turn); with BENCH_KEYS=1,
-- every second request carries a fresh Idempotency-Key. Prints one JSON line at the end.
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local hot = os.getenv("BENCH_HOT")
local token = os.getenv("BENCH_TOKEN") or ""
local skill = os.getenv("BENCH_SKILL") or "BENCH_SKILL"
local with_keys = os.getenv("BENCH_KEYS") == "1"
local run = os.getenv("BENCH_RUN") or "r"
local method = os.getenv("BENCH_METHOD") or "POST"
local get_path = os.getenv("BENCH_GET_PATH")
-- BENCH_SPAN_STRIDE: charge the users span_0 .. span_<users-1> in turn, from BENCH_SPAN_FROM
local span_stride = tonumber(os.getenv("BENCH_SPAN_STRIDE") or "")
local span_from = tonumber(os.getenv("BENCH_SPAN_FROM") or "0")
-- BENCH_USER_PREFIX: the random users' names (default bench_); BENCH_MEMBER: the member
-- every charge names (none when empty)
local prefix = os.getenv("BENCH_USER_PREFIX") or "bench_"
local member = os.getenv("BENCH_MEMBER") or ""
local member_field = member ~= "" and (',"member":"' .. member .. '"') or ""

local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  counter = 0
  math.randomseed(tid * 7919 + os.time())
end

function request()
  counter = counter + 1
  local headers = {["Content-Type"] = "application/json"}
  if token ~= "" then headers["Authorization"] = "Bearer " .. token end
  if method == "GET" then
    return wrk.format("GET", get_path, headers)
  end
  local user = hot or (prefix .. math.random(0, users - 1))
  if span_stride then
    -- each thread walks its own stretch of the span users, each user charged once
    user = "span_" .. ((tid - 1) * span_stride + span_from + counter - 1) % users
  end
  if with_keys and counter % 2 == 0 then
    headers["Idempotency-Key"] = run .. "-" .. tid .. "-" .. counter
  end
  return wrk.format("POST", "/v1/charges", headers,
    '{"user_id":"' .. user .. '","skill":"' .. skill .. '"' .. member_field .. '}')
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for code, n in pairs(s) do counts[code] = (counts[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(counts) do table.insert(parts, '"' .. code .. '":' .. n) end
  io.write(string.format(
    'JSON {"requests":%d,"seconds":%.3f,"p50":%d,"p99":%d,"p999":%d,"mean":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"statuses":{%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.mean, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, table.concat(parts, ",")))
end
