-- wrk script: POST the body in $BODY_FILE (GET without one) and print one JSON line of results.
local path = os.getenv("BODY_FILE")
if path then
  local f = assert(io.open(path, "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
if os.getenv("API_KEY") then
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_KEY")
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout + e.status, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
