-- wrk script: GET or PUT (chosen by WRK_METHOD) of 100-byte values over
-- 1,000 keys, spread over the keys round-robin per thread.
-- A key's path is WRK_PREFIX and its number ("/bench/000001" by default;
-- "/v2/keys/bench/" for etcd, "/GET/bench:" and "/SET/bench:" for webdis).
-- With WRK_PUT_FORM=1 a PUT's body is form-encoded, value=<value>, as
-- etcd's v2 API takes it; else it is the value.
local method = os.getenv("WRK_METHOD") or "GET"
local keys = tonumber(os.getenv("WRK_KEYS") or "1000")
local prefix = os.getenv("WRK_PREFIX") or "/bench/"
local body = string.rep("v", tonumber(os.getenv("WRK_VALUE_SIZE") or "100"))
local headers = {}
if os.getenv("WRK_PUT_FORM") == "1" then
  body = "value=" .. body
  headers["Content-Type"] = "application/x-www-form-urlencoded"
end
-- WRK_AUTHORIZATION: sent with every request ("Bearer <token>").
local authorization = os.getenv("WRK_AUTHORIZATION") or ""
if authorization ~= "" then
  headers["Authorization"] = authorization
end
local counter = 0

request = function()
  counter = counter + 1
  local path = prefix .. string.format("%06d", counter % keys)
  if method == "PUT" then
    return wrk.format("PUT", path, headers, body)
  end
  return wrk.format("GET", path, headers)
end
