-- wrk script: every request posts a new CloudEvent in binary mode (ce-* headers,
-- the data as the JSON body, a unique ce-id per thread and request) to the URL's
-- path, an intake's events: /api/domains/$BENCH_DOMAIN/intakes/bench-a/events.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0
local aggregate = os.getenv("BENCH_AGGREGATE")
local run = os.getenv("BENCH_RUN")
local token = os.getenv("BENCH_TOKEN")

function request()
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
    ["ce-specversion"] = "1.0",
    ["ce-id"] = string.format("%s-%d-%d", run, tid, counter),
    ["ce-source"] = "//bench/pipeline",
    ["ce-type"] = "com.example.pipeline.finished",
  }
  local body = string.format(
    '{"partition":"%s","pipeline":"%s","path":"s3://bench/%d/%d"}',
    aggregate, (counter % 2 == 0) and "A" or "B", tid, counter)
  return wrk.format("POST", nil, headers, body)  -- nil: the URL's path
end
