-- wrk script: every request asks for the next user of $USERS_FILE (one id per line),
-- each wrk thread starting at its own offset, so a load run rotates over the
-- sample's users instead of hammering one (a per-user cache would flatter that).
--   USERS_FILE=users.txt wrk -s benches/rotate_users.lua -H "x-api-key: …" http://host:port
local users = {}
for line in io.lines(os.getenv("USERS_FILE")) do
  if #line > 0 then users[#users + 1] = line end
end
local i = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("offset", threads * 7919)
end

function init(args)
  i = (offset or 0) % #users
end

function request()
  i = i % #users + 1
  return wrk.format("GET", "/v1/recommendations/" .. users[i] .. "?n=10")
end
