-- wrk script for bench/: every request is a POST of a small JSON-RPC body
-- whose id is unique across threads and requests.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0

function request()
  counter = counter + 1
  local body = string.format(
    '{"jsonrpc":"2.0","id":"%d-%d","method":"ping"}', tid or 0, counter)
  return wrk.format(nil, nil, nil, body)
end
