#!/usr/bin/env bash
# bench/run.sh — Quota's benchmark in one command.
#
# Builds `quota` and the bench binaries (release), starts the mock OpenAI upstream and `quota serve`
# on loopback with a fresh SQLite database in a temp dir, registers an account, credits it, creates a
# `developer` key and a `test` (sandbox) key, then drives closed-loop load directly against the mock,
# through Quota in proxy mode and in sandbox mode (1, 8 and 64 connections), plus a streaming row
# (64 chunks 20 ms apart), and prints the table (bench/README.md explains every figure). With
# BENCH_POSTGRES_URL (or QUOTA_TEST_POSTGRES_URL) set, it then restarts `quota serve` on a fresh
# schema of that PostgreSQL and adds the `proxy-pg` rows: proxy mode, billing on, one account,
# so every request holds and settles on the same hot wallet row.
#
# The gateway is pinned to core 0 and the mock and load generator to core 1 (`taskset`), so runs are
# comparable. Every wait is bounded and every process started here is stopped by the EXIT trap.
# Knobs (environment): BENCH_DURATION_SECS (5), BENCH_WARMUP_SECS (1), BENCH_CONNECTIONS ("1 8 64"),
# BENCH_STREAM_CONNECTIONS (16), BENCH_STREAM_DURATION_SECS (6), BENCH_SKIP_BUILD (0),
# BENCH_KEEP_TMP (0: the temp dir with logs and JSON is removed unless the run failed),
# BENCH_QUOTA_BIN (target/release/quota: another build of the gateway to measure),
# BENCH_POSTGRES_URL (default QUOTA_TEST_POSTGRES_URL; unset: no PostgreSQL rows),
# BENCH_PG_CONNECTIONS (default BENCH_CONNECTIONS).
# Any other QUOTA_* variable already in the environment (QUOTA_LOG, QUOTA_SQLITE_SYNCHRONOUS=full…)
# reaches `quota serve` as well.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${BENCH_DURATION_SECS:-5}"
WARMUP="${BENCH_WARMUP_SECS:-1}"
CONNECTIONS="${BENCH_CONNECTIONS:-1 8 64}"
PG_CONNECTIONS="${BENCH_PG_CONNECTIONS:-$CONNECTIONS}"
STREAM_CONNECTIONS="${BENCH_STREAM_CONNECTIONS:-16}"
STREAM_DURATION="${BENCH_STREAM_DURATION_SECS:-6}"
SKIP_BUILD="${BENCH_SKIP_BUILD:-0}"
KEEP_TMP="${BENCH_KEEP_TMP:-0}"
PG_BASE="${BENCH_POSTGRES_URL:-${QUOTA_TEST_POSTGRES_URL:-}}"
PG_SCHEMA=""
STREAM_CHUNKS=64
STREAM_CHUNK_DELAY_MS=20
EMAIL="bench@example.com"
PASSWORD="bench-password-123"
CREDITS=1000000000000 # $1,000,000: enough that no row ever gets a 402

BIN="$ROOT/target/release"
QUOTA_BIN="${BENCH_QUOTA_BIN:-$BIN/quota}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/quota-bench.XXXXXX")"
PIDS=()

say() { printf '[bench] %s\n' "$*" >&2; }
die() {
	say "error: $*"
	exit 1
}

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	# Bounded wait (5 s), then SIGKILL whatever is left.
	for _ in $(seq 1 50); do
		local alive=0
		for pid in "${PIDS[@]}"; do
			if kill -0 "$pid" 2>/dev/null; then alive=1; fi
		done
		[ "$alive" = 0 ] && break
		sleep 0.1
	done
	for pid in "${PIDS[@]}"; do
		kill -9 "$pid" 2>/dev/null || true
	done
	if [ -n "$PG_SCHEMA" ]; then
		timeout 30 psql "$PG_BASE" -qAtX -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true
	fi
	if [ "$status" != 0 ]; then
		for log in "$TMP/quota.log" "$TMP/mock.log"; do
			if [ -s "$log" ]; then
				say "last lines of $log:"
				tail -n 20 "$log" >&2 || true
			fi
		done
		say "failed (exit $status); logs and results kept in $TMP"
	elif [ "$KEEP_TMP" = 1 ]; then
		say "logs and results kept in $TMP"
	else
		rm -rf "$TMP"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- pinning -----------------------------------------------------------------------------------
PIN_GATEWAY=()
PIN_LOAD=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ] && taskset -c 1 true 2>/dev/null; then
	PIN_GATEWAY=(taskset -c 0)
	PIN_LOAD=(taskset -c 1)
	PINNING="pinned: quota on core 0; mock and loadgen on core 1 (taskset)"
else
	PINNING="NOT pinned (taskset missing or fewer than 2 cores): figures are not comparable across runs"
	say "warning: $PINNING"
fi

# --- build -------------------------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
	say "building quota and the bench binaries (release)"
	(cd "$ROOT" && cargo build --release -p quota-server -p quota-bench) ||
		die "cargo build --release -p quota-server -p quota-bench failed"
fi
for b in "$QUOTA_BIN" "$BIN/mock_upstream" "$BIN/loadgen" "$BIN/bench_report"; do
	[ -x "$b" ] || die "$b is missing (build it, or unset BENCH_SKIP_BUILD)"
done

# --- helpers -----------------------------------------------------------------------------------
# A port on 127.0.0.1 nothing listens on (a connect is refused). Bounded: 100 tries.
free_port() {
	local p
	for _ in $(seq 1 100); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	die "no free port found"
}

# The string value of "$2" in the one-object JSON text "$1" (no jq or python needed).
json_str() {
	printf '%s' "$1" | tr -d '\n' | sed -nE "s/.*\"$2\"[[:space:]]*:[[:space:]]*\"([^\"]*)\".*/\1/p"
}

# curl with a time bound; prints the body, then the status code on the last line.
http() {
	curl -sS --max-time 10 -w '\n%{http_code}' "$@"
}
status_of() { printf '%s' "$1" | tail -n 1; }
body_of() { printf '%s' "$1" | sed '$d'; }

# --- mock upstream ------------------------------------------------------------------------------
say "starting the mock upstream"
(exec "${PIN_LOAD[@]}" "$BIN/mock_upstream" --port 0 --chunks "$STREAM_CHUNKS" \
	--chunk-delay-ms "$STREAM_CHUNK_DELAY_MS" >"$TMP/mock.log" 2>&1) &
PIDS+=("$!") # `exec` (and taskset's own exec) keep this pid: it is the mock's
MOCK_PORT=""
for _ in $(seq 1 100); do
	MOCK_PORT="$(sed -nE 's#^mock listening on http://127\.0\.0\.1:([0-9]+)$#\1#p' "$TMP/mock.log")"
	[ -n "$MOCK_PORT" ] && break
	sleep 0.1
done
[ -n "$MOCK_PORT" ] || die "the mock did not start within 10 s"
MOCK="http://127.0.0.1:$MOCK_PORT"
say "mock on $MOCK"

# --- quota serve --------------------------------------------------------------------------------
QUOTA_PORT_NUM="$(free_port)"
QUOTA="http://127.0.0.1:$QUOTA_PORT_NUM"
export QUOTA_PORT="$QUOTA_PORT_NUM"
export QUOTA_BIND=127.0.0.1
export QUOTA_DATABASE_URL="sqlite://$TMP/quota.db"
export QUOTA_OPENAI_BASE_URL="$MOCK/v1"
export OPENAI_API_KEY="sk-bench"
# Anthropic ingress: OpenAI-shaped requests for `anthropic/…` models, translated to the mock's
# /v1/messages (issue 3's bench row).
export QUOTA_ANTHROPIC_BASE_URL="$MOCK"
export ANTHROPIC_API_KEY="sk-bench"
export QUOTA_WELCOME_CREDITS=0
# The per-key rate limiter stays on the request path (its cost is measured) but must not refuse the
# bench's own load: the default limit (100/min per key) would turn every row into 429s.
export QUOTA_RATE_LIMIT_PER_MINUTE="${QUOTA_RATE_LIMIT_PER_MINUTE:-1000000000}"
# The webhook rows deliver to the mock on 127.0.0.1: private targets must be allowed (SPEC §8).
export QUOTA_WEBHOOK_ALLOW_PRIVATE_URLS=true
QUOTA_PID=""
start_quota() {
	say "starting quota serve on $QUOTA (database $QUOTA_DATABASE_URL)"
	(cd "$TMP" && exec "${PIN_GATEWAY[@]}" "$QUOTA_BIN" serve >>"$TMP/quota.log" 2>&1) &
	QUOTA_PID=$! # `exec` (and taskset's own exec) keep this pid: it is the gateway's
	PIDS+=("$QUOTA_PID")
	local up=0
	for _ in $(seq 1 300); do
		kill -0 "$QUOTA_PID" 2>/dev/null || die "quota serve exited during start-up"
		if [ "$(curl -s --max-time 1 -o /dev/null -w '%{http_code}' "$QUOTA/healthz")" = 200 ]; then
			up=1
			break
		fi
		sleep 0.1
	done
	[ "$up" = 1 ] || die "GET /healthz did not answer 200 within 30 s"
	say "quota is up (pid $QUOTA_PID)"
}
# SIGTERM (graceful: the server flushes its ledger), bounded to 15 s, then SIGKILL.
stop_quota() {
	kill "$QUOTA_PID" 2>/dev/null || true
	for _ in $(seq 1 150); do
		kill -0 "$QUOTA_PID" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$QUOTA_PID" 2>/dev/null || true
	wait "$QUOTA_PID" 2>/dev/null || true
	local keep=()
	for pid in "${PIDS[@]}"; do [ "$pid" = "$QUOTA_PID" ] || keep+=("$pid"); done
	PIDS=("${keep[@]}")
}
balance() {
	local r
	r="$(http -H "Authorization: Bearer $SESSION" "$QUOTA/auth/me")"
	[ "$(status_of "$r")" = 200 ] || die "GET /auth/me: $(status_of "$r") $(body_of "$r")"
	body_of "$r" | tr -d '\n' | sed -nE 's/.*"balance"[[:space:]]*:[[:space:]]*(-?[0-9]+).*/\1/p'
}
start_quota

# --- account, credits, keys ----------------------------------------------------------------------
# setup_account: register, credit (as the operator would, from another process), create a
# `developer` and a `test` key: sets SESSION, DEV_KEY, TEST_KEY. Run once per database.
setup_account() {	r="$(http -X POST -H 'content-type: application/json' \
		-d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}" "$QUOTA/auth/register")"
	case "$(status_of "$r")" in 200 | 201) ;; *) die "POST /auth/register: $(status_of "$r") $(body_of "$r")" ;; esac
	SESSION="$(json_str "$(body_of "$r")" session_token)"
	[ -n "$SESSION" ] || die "POST /auth/register answered no session_token: $(body_of "$r")"

	(cd "$TMP" && timeout 60 "$QUOTA_BIN" admin credit "$EMAIL" "$CREDITS") >"$TMP/credit.log" 2>&1 ||
		die "quota admin credit $EMAIL $CREDITS failed: $(tail -n 5 "$TMP/credit.log")"
	# A running server applies transfers written by other processes at its next ledger tick
	# (every 250 ms); wait for it, bounded.
	seen=0
	for _ in $(seq 1 40); do
		if [ "$(balance)" = "$CREDITS" ]; then
			seen=1
			break
		fi
		sleep 0.05
	done
	[ "$seen" = 1 ] || die "the running server did not see \`quota admin credit\` within 2 s (balance $(balance))"

	create_key() {
		local r key
		r="$(http -X POST -H 'content-type: application/json' -H "Authorization: Bearer $SESSION" \
			-d "{\"name\":\"bench-$1\",\"billing_mode\":\"$1\"}" "$QUOTA/developers/keys")"
		case "$(status_of "$r")" in 200 | 201) ;; *) die "POST /developers/keys ($1): $(status_of "$r") $(body_of "$r")" ;; esac
		key="$(json_str "$(body_of "$r")" key)"
		[ -n "$key" ] || die "POST /developers/keys ($1) answered no key: $(body_of "$r")"
		printf '%s' "$key"
	}
	DEV_KEY="$(create_key developer)"
	TEST_KEY="$(create_key test)"

	r="$(http -H "Authorization: Bearer $SESSION" "$QUOTA/auth/me")"
	say "account ready: $(body_of "$r")"
}
setup_account

# --- request bodies ------------------------------------------------------------------------------
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16}' >"$TMP/body.json"
# max_tokens covers the 64 streamed tokens, so the reservation is never overshot.
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":128,"stream":true,"stream_options":{"include_usage":true}}' >"$TMP/stream.json"
printf '%s' '{"model":"anthropic/claude-haiku-4.5","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16}' >"$TMP/anthropic.json"
printf '%s' '{"model":"gpt-4o-mini","input":[{"role":"user","content":"Say hello to the benchmark."}],"max_output_tokens":16}' >"$TMP/responses.json"
printf '%s' '{"model":"anthropic/claude-haiku-4.5","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":128,"stream":true}' >"$TMP/stream-anthropic.json"

# One request per mode before the load, so a broken mode fails here with its answer shown.
for mode in proxy sandbox; do
	key="$DEV_KEY"
	[ "$mode" = sandbox ] && key="$TEST_KEY"
	r="$(http -X POST -H 'content-type: application/json' -H "Authorization: Bearer $key" \
		--data-binary @"$TMP/body.json" "$QUOTA/v1/chat/completions")"
	[ "$(status_of "$r")" = 200 ] || die "$mode request: $(status_of "$r") $(body_of "$r")"
	body_of "$r" | grep -q '"quota"' || die "$mode answer has no \"quota\" object: $(body_of "$r")"
done
say "proxy and sandbox answer 200 with a quota object"

mock_completions() {
	curl -s --max-time 5 "$MOCK/stats" | sed -nE 's/.*"completions":([0-9]+).*/\1/p'
}

# --- load ----------------------------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
ROWS=()
# run_row KIND CONNECTIONS DURATION URL BODY [loadgen args...]
run_row() {
	local kind="$1" conns="$2" duration="$3" url="$4" body="$5"
	shift 5
	local out="$TMP/$kind-$conns.json"
	say "row $kind/$conns: ${WARMUP}s warm-up + ${duration}s"
	timeout $((${WARMUP%.*} + ${duration%.*} + 60)) "${PIN_LOAD[@]}" "$BIN/loadgen" \
		--url "$url" --connections "$conns" --duration-secs "$duration" --warmup-secs "$WARMUP" \
		--body-file "$body" --clk-tck "$CLK_TCK" "$@" >"$out" 2>>"$TMP/loadgen.log" ||
		die "loadgen failed for row $kind/$conns: $(tail -n 3 "$TMP/loadgen.log")"
	ROWS+=(--row "$kind/$conns=$out")
}

MOCK_AUTH=(--header "Authorization: Bearer sk-bench")
WATCH=(--watch-pid "$QUOTA_PID" --expect-body '"quota"')
for c in $CONNECTIONS; do
	run_row direct "$c" "$DURATION" "$MOCK/v1/chat/completions" "$TMP/body.json" "${MOCK_AUTH[@]}"
done
before="$(mock_completions)"
for c in $CONNECTIONS; do
	run_row proxy "$c" "$DURATION" "$QUOTA/v1/chat/completions" "$TMP/body.json" \
		--header "Authorization: Bearer $DEV_KEY" "${WATCH[@]}"
done
after_proxy="$(mock_completions)"
for c in $CONNECTIONS; do
	run_row sandbox "$c" "$DURATION" "$QUOTA/v1/chat/completions" "$TMP/body.json" \
		--header "Authorization: Bearer $TEST_KEY" "${WATCH[@]}"
done
after_sandbox="$(mock_completions)"
for c in $CONNECTIONS; do
	run_row anthropic "$c" "$DURATION" "$QUOTA/v1/chat/completions" "$TMP/anthropic.json" \
		--header "Authorization: Bearer $DEV_KEY" "${WATCH[@]}"
done
for c in $CONNECTIONS; do
	run_row responses "$c" "$DURATION" "$QUOTA/v1/responses" "$TMP/responses.json" \
		--header "Authorization: Bearer $DEV_KEY" "${WATCH[@]}"
done

# --- webhooks configured: the request path must not change; delivery throughput ------------------
r="$(http -X POST -H 'content-type: application/json' -H "Authorization: Bearer $SESSION" \
	-d "{\"url\":\"$MOCK/hook\",\"events\":[\"usage.completed\"]}" "$QUOTA/v1/webhooks")"
case "$(status_of "$r")" in 200 | 201) ;; *) die "POST /v1/webhooks: $(status_of "$r") $(body_of "$r")" ;; esac
for c in $CONNECTIONS; do
	run_row sandbox-webhooks "$c" "$DURATION" "$QUOTA/v1/chat/completions" "$TMP/body.json" \
		--header "Authorization: Bearer $TEST_KEY" "${WATCH[@]}"
done
# Every usage.completed committed since the endpoint exists (in the outbox, or still owed by its
# usage record) must arrive (bounded wait).
expected="$(python3 -c "import sqlite3,sys; c=sqlite3.connect('file:$TMP/quota.db?mode=ro', uri=True); print(c.execute(\"SELECT (SELECT COUNT(*) FROM events WHERE type = 'usage.completed') + (SELECT COUNT(*) FROM usage_records WHERE pending_event IS NOT NULL)\").fetchone()[0])")"
hooks='{}'
for _ in $(seq 1 1200); do
	hooks="$(curl -fs "$MOCK/stats" || echo '{}')"
	got="$(printf '%s' "$hooks" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("hooks", 0))')"
	[ "$got" -ge "$expected" ] && break
	sleep 0.1
done
HOOK_NOTE="$(printf '%s' "$hooks" | python3 -c "
import json, sys
d = json.load(sys.stdin); n = d.get('hooks', 0); span = (d.get('hooks_last_us', 0) - d.get('hooks_first_us', 0)) / 1e6
print(f'webhooks: {n} of $expected usage.completed deliveries received; {n / span:.0f} deliveries/s over {span:.1f} s' if span > 0 else f'webhooks: {n} of $expected deliveries received')")"
run_row stream-direct "$STREAM_CONNECTIONS" "$STREAM_DURATION" "$MOCK/v1/chat/completions" \
	"$TMP/stream.json" "${MOCK_AUTH[@]}"
run_row stream-proxy "$STREAM_CONNECTIONS" "$STREAM_DURATION" "$QUOTA/v1/chat/completions" \
	"$TMP/stream.json" --header "Authorization: Bearer $DEV_KEY" "${WATCH[@]}"
run_row stream-anthropic "$STREAM_CONNECTIONS" "$STREAM_DURATION" "$QUOTA/v1/chat/completions" \
	"$TMP/stream-anthropic.json" --header "Authorization: Bearer $DEV_KEY" "${WATCH[@]}"

# --- after the load: the ledger must still verify ---------------------------------------------------
LEDGER="not checked"
if (cd "$TMP" && timeout 120 "$QUOTA_BIN" ledger verify) >"$TMP/verify.log" 2>&1; then
	LEDGER="quota ledger verify: OK"
else
	LEDGER="quota ledger verify: FAILED ($(tail -n 3 "$TMP/verify.log" | tr '\n' ' '))"
fi
r="$(http -H "Authorization: Bearer $SESSION" "$QUOTA/auth/me")"
ACCOUNT_AFTER="$(body_of "$r")"

# --- PostgreSQL: proxy mode on one hot wallet ------------------------------------------------------
PG_NOTE="no PostgreSQL rows (set BENCH_POSTGRES_URL or QUOTA_TEST_POSTGRES_URL)"
if [ -n "$PG_BASE" ]; then
	command -v psql >/dev/null 2>&1 || die "psql is needed to create the PostgreSQL schema"
	PG_SCHEMA="quota_bench_$$_$RANDOM"
	timeout 30 psql "$PG_BASE" -qAtX -v ON_ERROR_STOP=1 -c "CREATE SCHEMA $PG_SCHEMA" >/dev/null ||
		die "cannot create schema $PG_SCHEMA in $PG_BASE"
	stop_quota
	sep='?'
	case "$PG_BASE" in *\?*) sep='&' ;; esac
	export QUOTA_DATABASE_URL="$PG_BASE${sep}options=-c%20search_path%3D$PG_SCHEMA"
	start_quota
	setup_account
	r="$(http -X POST -H 'content-type: application/json' -H "Authorization: Bearer $DEV_KEY" \
		--data-binary @"$TMP/body.json" "$QUOTA/v1/chat/completions")"
	[ "$(status_of "$r")" = 200 ] || die "proxy request on PostgreSQL: $(status_of "$r") $(body_of "$r")"
	WATCH=(--watch-pid "$QUOTA_PID" --expect-body '"quota"')
	for c in $PG_CONNECTIONS; do
		run_row proxy-pg "$c" "$DURATION" "$QUOTA/v1/chat/completions" "$TMP/body.json" \
			--header "Authorization: Bearer $DEV_KEY" "${WATCH[@]}"
	done
	if (cd "$TMP" && timeout 120 "$QUOTA_BIN" ledger verify) >"$TMP/verify-pg.log" 2>&1; then
		PG_LEDGER="OK"
	else
		PG_LEDGER="FAILED ($(tail -n 3 "$TMP/verify-pg.log" | tr '\n' ' '))"
	fi
	PG_NOTE="proxy-pg rows: PostgreSQL $(psql "$PG_BASE" -qAtX -c 'SHOW server_version' 2>/dev/null) (unpinned: it shares both cores), synchronous_commit=$(psql "$PG_BASE" -qAtX -c 'SHOW synchronous_commit' 2>/dev/null); one account and one key, so every request holds and settles on one wallet row; quota ledger verify on PostgreSQL: $PG_LEDGER"
fi

"$BIN/bench_report" "${ROWS[@]}" \
	--note "$PINNING; $(nproc) cores; load average before the report: $(cut -d' ' -f1-3 /proc/loadavg)" \
	--note "each row: ${WARMUP}s warm-up, then ${DURATION}s measured (streams: ${STREAM_DURATION}s; mock streams $STREAM_CHUNKS chunks ${STREAM_CHUNK_DELAY_MS} ms apart)" \
	--note "CPU µs/req = quota's utime+stime over the window ÷ 2xx requests; peak RSS = quota's VmHWM so far (cumulative)" \
	--note "mock completions served during proxy rows: $((${after_proxy:-0} - ${before:-0})); during sandbox rows: $((${after_sandbox:-0} - ${after_proxy:-0})) (must be 0); anthropic rows: OpenAI shape in, Anthropic /v1/messages out, 'added' against the OpenAI direct row" \
	--note "$LEDGER; account after the run: $ACCOUNT_AFTER" \
	--note "$PG_NOTE" \
	--note "$HOOK_NOTE (sandbox-webhooks rows: the sandbox rows again with a webhook endpoint receiving every usage.completed)"
