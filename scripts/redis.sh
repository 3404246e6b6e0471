#!/usr/bin/env bash
# Make sure a Redis answers at REDIS_URL's host and port (default 127.0.0.1:6379); start one if not.
set -euo pipefail
url=${REDIS_URL:-redis://127.0.0.1:6379/0}
hostport=${url#*://}; hostport=${hostport#*@}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}; [ "$port" = "$hostport" ] && port=6379
[ "$host" = localhost ] && host=127.0.0.1
ping() { (exec 3<>"/dev/tcp/$host/$port" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
ping && exit 0
if ! command -v redis-server >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else
    echo "Redis is not answering at $host:$port and redis-server is not installed; install Redis or set REDIS_URL." >&2
    exit 1
  fi
fi
echo "starting redis-server on $host:$port" >&2
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
  --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/rlhf-backend-redis.log"
for _ in $(seq 1 50); do ping && exit 0; sleep 0.1; done
echo "redis-server did not come up on $host:$port" >&2
exit 1
