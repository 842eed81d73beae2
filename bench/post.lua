-- wrk script: every request posts a new source (unique keys per thread and
-- request) for $BENCH_AGGREGATE of $BENCH_DOMAIN to the URL's path: /api/sources,
-- or the plain-Django anchor's /anchor/insert.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
}
local domain = os.getenv("BENCH_DOMAIN")
local aggregate = os.getenv("BENCH_AGGREGATE")
local run = os.getenv("BENCH_RUN")

function request()
  counter = counter + 1
  local body = string.format(
    '{"domain":"%s","aggregate":"%s","collection":"%s",' ..
    '"keys":{"run":"%s","thread":"%d","n":"%d"},"attrs":{"path":"s3://bench/%d/%d"}}',
    domain, aggregate, (counter % 2 == 0) and "A" or "B", run, tid, counter, tid, counter)
  return wrk.format("POST", nil, headers, body)  -- nil: the URL's path
end
