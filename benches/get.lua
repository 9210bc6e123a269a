-- wrk script: GET the URL and print one JSON line of results.
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
