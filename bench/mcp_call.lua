-- wrk script for bench/ scenarios `mcp` and `mcp-auth`: every request is a
-- POST of an MCP tools/call on the session the harness opened, with a
-- JSON-RPC id unique across threads and requests. The harness passes the
-- session in the environment: MCP_SESSION_ID, MCP_PROTOCOL_VERSION, MCP_TOOL,
-- MCP_MESSAGE, and optionally MCP_AUTHORIZATION, sent as the Authorization
-- header of every request (scenario `mcp-auth`: "Bearer <token>").
--
-- wrk counts non-2xx/3xx itself. This script also counts the responses that
-- wrk takes for successes but are not: another 2xx/3xx status than 200, or a
-- 200 whose body lacks the echoed text. done() prints their sum as
-- "Unexpected responses: N", which bench/wrk.py adds to the errors.

local function required(name)
  local value = os.getenv(name)
  if value == nil or value == "" then
    -- error() would only be printed, and wrk would run anyway.
    io.stderr:write("mcp_call.lua: " .. name .. " is not set\n")
    os.exit(2)
  end
  return value
end

local session = required("MCP_SESSION_ID")
local protocol_version = required("MCP_PROTOCOL_VERSION")
local tool = required("MCP_TOOL")
local message = required("MCP_MESSAGE")
local authorization = os.getenv("MCP_AUTHORIZATION")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Session-Id"] = session
wrk.headers["MCP-Protocol-Version"] = protocol_version
if authorization ~= nil and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

-- The echoed text as a JSON member, whatever whitespace the encoder puts around ':'.
local echoed = '"text"%s*:%s*"' .. message:gsub("%p", "%%%0") .. '"'

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local counter = 0
other_status = 0
no_echo = 0

function request()
  counter = counter + 1
  local body = string.format(
    '{"jsonrpc":"2.0","id":"%d-%d","method":"tools/call",'
      .. '"params":{"name":"%s","arguments":{"message":"%s"}}}',
    tid or 0, counter, tool, message)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status == 200 then
    if not string.find(body, echoed) then
      no_echo = no_echo + 1
    end
  elseif status >= 200 and status < 400 then
    other_status = other_status + 1
  end
end

function done(summary, latency, requests)
  local status, echo = 0, 0
  for _, thread in ipairs(threads) do
    status = status + thread:get("other_status")
    echo = echo + thread:get("no_echo")
  end
  io.write(string.format(
    "Unexpected responses: %d (2xx/3xx other than 200: %d, 200 without the echo: %d)\n",
    status + echo, status, echo))
end
