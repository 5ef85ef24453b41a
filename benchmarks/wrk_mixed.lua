-- wrk script: GET or PUT (chosen by WRK_METHOD) of 100-byte values over
-- 1,000 keys, spread over the keys round-robin per thread.
local method = os.getenv("WRK_METHOD") or "GET"
local keys = tonumber(os.getenv("WRK_KEYS") or "1000")
local body = string.rep("v", tonumber(os.getenv("WRK_VALUE_SIZE") or "100"))
local counter = 0

request = function()
  counter = counter + 1
  local path = string.format("/bench/%06d", counter % keys)
  if method == "PUT" then
    return wrk.format("PUT", path, nil, body)
  end
  return wrk.format("GET", path)
end
