-- wrk script for the MCP benchmarks (bench/run.py). The same script and the same load for every contender.
--
--   wrk -t1 -cN -dDs -s bench/wrk/mcp.lua http://127.0.0.1:PORT/mcp -- WORKLOAD SESSION TOOL MODE
--
-- WORKLOAD  call        tools/call TOOL with small arguments ({"text":"hello, world"})
--           call64k     tools/call TOOL with 64 KiB arguments ({"text":"xxxx...", 65,536 x)
--           list        tools/list
--           init        initialize (a new session per request; SESSION is not sent)
--           call2026    tools/call TOOL at MCP 2026-07-28: stateless (SESSION is not sent), routing
--                       headers Mcp-Method/Mcp-Name, params._meta
-- SESSION   Mcp-Session-Id to send ("-" for none)
-- TOOL      tool name as this contender spells it (echo, s1_echo, b1__echo)
-- MODE      fast (default) | check: check every answer (HTTP 200, a JSON-RPC "result", no "error")
--
-- Every request carries a fresh JSON-RPC id. done() prints one line "MCPBENCH {json}" for the driver.

local threads = {}
local prefix, suffix = "", ""
local n = 0

function setup(thread)
  table.insert(threads, thread)
end

local function check_response(status, headers, body)
  checked = checked + 1
  local ok = status == 200
    and body ~= nil
    and string.find(body, '"result"', 1, true) ~= nil
    and string.find(body, '"error":', 1, true) == nil
  if not ok then
    bad = bad + 1
    if sample == "" then
      sample = "HTTP " .. tostring(status) .. ": " .. string.sub(body or "", 1, 400)
    end
  end
end

function init(args)
  local workload = args[1] or "call"
  local session = args[2] or "-"
  local tool = args[3] or "echo"
  local mode = args[4] or "fast"

  -- Globals, per thread, read by done() through thread:get().
  bad, checked, sample = 0, 0, ""

  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"

  if workload == "call2026" then
    wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
    wrk.headers["Mcp-Method"] = "tools/call"
    wrk.headers["Mcp-Name"] = tool
    prefix = '{"jsonrpc":"2.0","id":'
    suffix = ',"method":"tools/call","params":{"name":"' .. tool .. '","arguments":{"text":"hello, world"},'
      .. '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
      .. '"io.modelcontextprotocol/clientCapabilities":{}}}}'
  elseif workload == "init" then
    prefix = '{"jsonrpc":"2.0","id":'
    suffix = ',"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},'
      .. '"clientInfo":{"name":"mcpgw-bench","version":"1.0.0"}}}'
  else
    wrk.headers["MCP-Protocol-Version"] = "2025-06-18"
    if session ~= "-" and session ~= "" then
      wrk.headers["Mcp-Session-Id"] = session
    end
    prefix = '{"jsonrpc":"2.0","id":'
    if workload == "list" then
      suffix = ',"method":"tools/list","params":{}}'
    elseif workload == "call64k" then
      suffix = ',"method":"tools/call","params":{"name":"' .. tool .. '","arguments":{"text":"'
        .. string.rep("x", 65536) .. '"}}}'
    elseif workload == "call" then
      suffix = ',"method":"tools/call","params":{"name":"' .. tool .. '","arguments":{"text":"hello, world"}}}'
    else
      error("unknown workload " .. workload)
    end
  end

  if mode == "check" then
    response = check_response
  end
end

function request()
  n = n + 1
  return wrk.format(nil, nil, nil, prefix .. n .. suffix)
end

function done(summary, latency, requests)
  local bad_total, checked_total, first = 0, 0, ""
  for _, t in ipairs(threads) do
    bad_total = bad_total + (t:get("bad") or 0)
    checked_total = checked_total + (t:get("checked") or 0)
    local s = t:get("sample") or ""
    if first == "" then first = s end
  end
  local e = summary.errors
  local out = string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,'
      .. '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,'
      .. '"checked":%d,"bad":%d,"sample":"%s"}',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max, checked_total, bad_total,
    (string.gsub(string.gsub(first, '[\\"]', "\\%0"), "[%c]", " ")))
  io.write("MCPBENCH " .. out .. "\n")
end
