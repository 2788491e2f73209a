#!/usr/bin/env bash
# Reservations only, by wrk (as in issue 16), against `tombola serve` with the HTTP benches'
# settings on a fresh database (saleday_diag on the local PostgreSQL, port 19600), then the
# engine's batch sizes and commit times from /metrics; the no-op route by wrk alongside.
# Usage: bench/wrk/reserve.sh [tombola binary] [tag] [output dir]  (docs/BENCHMARKS.md)
set -u
O=${3:-/tmp}
S=${1:-target/release/tombola}
TAG=${2:-main}
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS saleday_diag" -c "CREATE DATABASE saleday_diag" postgres
URL=postgres://postgres@127.0.0.1:5432/saleday_diag
$S migrate --database-url $URL > /dev/null 2>&1
KEY=$($S keys create --database-url $URL --role admin 2>/dev/null | tail -1)
DATABASE_URL=$URL TOMBOLA_LISTEN=127.0.0.1:19600 TOMBOLA_RATE_LIMIT_PER_KEY=100000000 TOMBOLA_RATE_LIMIT_PER_IP=100000000 \
  TOMBOLA_QUEUE_CAPACITY=65536 TOMBOLA_STRIPE_WEBHOOK_SECRETS=whsec_bench_secret $S serve > $O/diag-server.log 2>&1 &
SP=$!
for i in $(seq 1 100); do curl -sf http://127.0.0.1:19600/readyz > /dev/null && break; sleep 0.2; done
RID=$(curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' http://127.0.0.1:19600/v1/raffles -d '{"title":"Diag","ticket_count":1000000,"price_minor":500,"currency":"USD","prizes":[{"name":"Prize"}],"max_tickets_per_order":10,"draw_commitment":"19b25856e1c150ca834cffc8b59b23adbd0ec0389e58eb22b3b64768098d002b","organizer_id":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -s -o /dev/null -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -X POST http://127.0.0.1:19600/v1/raffles/$RID/open -d '{}'
cat > $O/reserve.lua <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
request = function()
  return wrk.format(nil, "/v1/raffles/$RID/reservations", nil,
    '{"buyer":{"name":"W","email":"w' .. math.random(1, 1000000000) .. '@example.com"},"quantity":' .. math.random(1, 3) .. '}')
end
LUA
wrk -t2 -c256 -d10s -H "Authorization: Bearer $KEY" http://127.0.0.1:19600/v1/whoami > $O/diag-$TAG-noop.txt 2>&1
wrk -t2 -c256 -d10s --latency -s $O/reserve.lua http://127.0.0.1:19600 > $O/diag-$TAG-reserve.txt 2>&1
curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:19600/metrics | grep -E "^tombola_engine_(batch_commands|commit_seconds)(_sum|_count)" > $O/diag-$TAG-metrics.txt
kill $SP; wait $SP
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS saleday_diag" postgres
