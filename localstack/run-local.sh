#!/usr/bin/env bash
# `make run`: the whole system on this machine.
#
# 1. an AWS emulator: the one AWS_ENDPOINT_URL names (e.g. LocalStack from
#    localstack/compose.yaml), or else moto server on 127.0.0.1:$EMULATOR_PORT;
# 2. provisioning of template.yaml's resources on it (localstack/provision.py);
# 3. the functions behind local event source mappings (local-runner): persist,
#    fallback and one connector per channel; the webhook behind a local
#    function URL; the channel simulator standing in for WhatsApp, Instagram
#    and Telegram;
# 4. two gateways on the sns-sqs bus, on $GATEWAY_A_PORT and $GATEWAY_B_PORT;
# 5. the web app (built into $WEB_DIR by `make web`) on $WEB_PORT, with
#    development sign-in; the gateways allow its origin (CORS).
#
# Stopping: Ctrl-C (SIGINT) or SIGTERM sends TERM to the gateways (they delete
# their queues), function runners and simulator, and kills whatever still runs
# STOP_GRACE_SECS (10) later; then the same for the emulator. So everything
# this script started is gone within about 2 x 10 s, whatever had already
# died; a second Ctrl-C kills at once. Every process started is recorded
# (pid, start time) in $RUN_DIR/pids: a start that finds processes of an
# earlier run that was itself killed stops them first.
#
# Logs are under $RUN_DIR: .run/, or CHAT_RUN_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${CHAT_PYTHON:?set CHAT_PYTHON to the python of the emulator environment (make run does)}"
BIN="${CHAT_BIN_DIR:-$ROOT/target/debug}"
RUN_DIR="${CHAT_RUN_DIR:-$ROOT/.run}"
PID_FILE="$RUN_DIR/pids"
STOP_GRACE_SECS=10
EMULATOR_PORT="${EMULATOR_PORT:-4566}"
GATEWAY_A_PORT="${GATEWAY_A_PORT:-50051}"
GATEWAY_B_PORT="${GATEWAY_B_PORT:-50052}"
WEBHOOK_PORT="${WEBHOOK_PORT:-8091}"
SIMULATOR_PORT="${SIMULATOR_PORT:-8090}"
WEB_PORT="${WEB_PORT:-8080}"
WEB_DIR="${WEB_DIR:-$ROOT/web/dist-dev}"
# Every process serves Prometheus metrics on its own port from here up:
# gateways first, then the function runners in the order they start.
METRICS_PORT="${METRICS_PORT:-9464}"
METRICS_URLS=()
next_metrics() { # name: sets METRICS_ADDR to the next address, remembered for the summary
    METRICS_ADDR="127.0.0.1:$((METRICS_PORT + ${#METRICS_URLS[@]}))"
    METRICS_URLS+=("$(printf '%-30s http://%s/metrics' "$1" "$METRICS_ADDR")")
}
STACK="${CHAT_STACK_NAME:-chat}"
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd)"

export AWS_REGION="${AWS_REGION:-us-east-1}"
# Emulators accept any credentials; real ones in the environment win.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"

# ---- process bookkeeping --------------------------------------------------
# Liveness is read from /proc rather than from `wait`: `wait PID` blocks
# without bound, and `wait -n` forgets or re-reports children that bash has
# already reaped; neither may decide whether stopping ends.

# (Read with `read`: under set -e, a `$(<file)` of a missing file ends the
# script even inside `||`.)
start_time() { # pid: its start time (clock ticks since boot); fails if it is gone
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    local -a fields
    read -ra fields <<<"${stat##*) }" # after "pid (comm) ": state is field 3
    echo "${fields[19]}"              # field 22
}

alive() { # pid: running (a zombie has exited)
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z ]]
}

hurry=""
stop_pids() { # pid...: TERM, then KILL what still runs after STOP_GRACE_SECS
    local pid left deadline=$((SECONDS + STOP_GRACE_SECS))
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    while true; do
        left=()
        for pid in "$@"; do
            if alive "$pid"; then left+=("$pid"); fi
        done
        if ((${#left[@]} == 0)); then return 0; fi
        if [[ -n "$hurry" ]] || ((SECONDS >= deadline)); then
            echo "==> killing what did not stop: ${left[*]}"
            for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
            return 0
        fi
        sleep 0.1
    done
}

# A run that was itself killed (kill -9, a closed terminal) leaves its
# processes running and its emulator's port taken. Stop them, but only those
# that are still the processes it started: same pid and same start time,
# never a pid the system has since given to something else.
if [[ -s "$PID_FILE" ]]; then
    leftovers=()
    while read -r pid started name; do
        [[ "$pid" =~ ^[0-9]+$ && "$(start_time "$pid" || true)" == "$started" ]] || continue
        if [[ "$name" == run-local.sh ]]; then
            echo "error: another run (pid $pid) is using $RUN_DIR: stop it (Ctrl-C in its terminal, or kill $pid)," >&2
            echo "       or give this one its own CHAT_RUN_DIR and ports" >&2
            exit 1
        fi
        leftovers+=("$pid")
    done <"$PID_FILE"
    if ((${#leftovers[@]} > 0)); then
        echo "==> stopping ${#leftovers[@]} processes an earlier run left running (pids ${leftovers[*]})"
        stop_pids "${leftovers[@]}"
    fi
fi
echo "$$ $(start_time $$) run-local.sh" >"$PID_FILE"

declare -A names=()
running=() # started and not yet seen to exit
emulator_pid=""
step_pid="" # a foreground step in progress (see run_step)
track() {   # pid name
    names[$1]="$2"
    running+=("$1")
    echo "$1 $(start_time "$1" || echo 0) $2" >>"$PID_FILE"
}

stopping=""
stop() {
    [[ -z "$stopping" ]] || return 0
    stopping=1
    # A second Ctrl-C cuts the grace period short instead of ending this
    # script before the processes it started.
    trap 'hurry=1' INT TERM
    echo
    local pids=("${running[@]}")
    if [[ -n "$step_pid" ]]; then pids+=("$step_pid"); fi
    if ((${#pids[@]} > 0)); then
        echo "==> stopping gateways (their queues and subscriptions are deleted), function runners and simulator"
        stop_pids "${pids[@]}"
    fi
    if [[ -n "$emulator_pid" ]]; then
        echo "==> stopping the emulator"
        stop_pids "$emulator_pid"
    fi
    rm -f "$PID_FILE"
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

# A foreground step (provisioning, readiness checks) run in the background
# and waited for: bash runs a trap only once a foreground command has
# finished, but interrupts `wait` at once.
run_step() { # command...
    "$@" &
    step_pid=$!
    local status=0
    wait "$step_pid" || status=$?
    step_pid=""
    return "$status"
}

wait_for_port() { # host port what
    local deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "error: $3 did not listen on $1:$2 within 60 s" >&2
            return 1
        fi
        sleep 0.1
    done
}

# ---- the system -----------------------------------------------------------

if [[ -z "${AWS_ENDPOINT_URL:-}" ]]; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$EMULATOR_PORT") 2>/dev/null; then
        echo "error: port $EMULATOR_PORT is taken; set EMULATOR_PORT, or AWS_ENDPOINT_URL to use that emulator" >&2
        exit 1
    fi
    echo "==> starting moto server on 127.0.0.1:$EMULATOR_PORT (log: $RUN_DIR/emulator.log)"
    # Its own session: Ctrl-C reaches the gateways first; the emulator is
    # stopped after they have deleted their queues. (setsid execs the server
    # in place, as a background job of a script is no process group leader,
    # so $! is the server's pid.)
    setsid "$PY" localstack/moto_server.py -H 127.0.0.1 -p "$EMULATOR_PORT" >"$RUN_DIR/emulator.log" 2>&1 &
    emulator_pid=$!
    echo "$emulator_pid $(start_time "$emulator_pid" || echo 0) emulator" >>"$PID_FILE"
    export AWS_ENDPOINT_URL="http://127.0.0.1:$EMULATOR_PORT"
    wait_for_port 127.0.0.1 "$EMULATOR_PORT" "moto server"
else
    echo "==> using the emulator at $AWS_ENDPOINT_URL"
fi

echo "==> provisioning template.yaml as stack '$STACK'"
run_step "$PY" localstack/provision.py --template template.yaml --endpoint "$AWS_ENDPOINT_URL" \
    --region "$AWS_REGION" --stack-name "$STACK" --format env >"$RUN_DIR/stack.env"
while IFS='=' read -r key value; do
    [[ -n "$key" ]] && export "$key=$value"
done <"$RUN_DIR/stack.env"

export CHAT_JWT_SECRET_FILE="$RUN_DIR/jwt-secret"
export CHAT_BUS=sns-sqs
export CHAT_QUEUE_PREFIX="$STACK-gw-"
# The web app's page calls the gateways from its own origin.
export CHAT_CORS_ALLOW_ORIGINS="http://127.0.0.1:$WEB_PORT,http://localhost:$WEB_PORT"
# The shared development secret exists before either gateway starts.
if [[ ! -s "$CHAT_JWT_SECRET_FILE" ]]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_urlsafe(48))' >"$CHAT_JWT_SECRET_FILE")
fi
start_gateway() { # name port
    echo "==> starting gateway $1 on 127.0.0.1:$2 (log: $RUN_DIR/gateway-$1.log)"
    next_metrics "gateway $1"
    CHAT_INSTANCE_ID="local-$1" CHAT_LISTEN="127.0.0.1:$2" CHAT_METRICS_LISTEN="$METRICS_ADDR" \
        "$BIN/gateway" >"$RUN_DIR/gateway-$1.log" 2>&1 &
    track $! "gateway $1"
}
# Gateways first, back to back: each binds its port as it starts, before it
# or the function runners open connections whose ephemeral local ports
# (32768-60999 on Linux) could take 50051/50052.
start_gateway a "$GATEWAY_A_PORT"
start_gateway b "$GATEWAY_B_PORT"
wait_for_port 127.0.0.1 "$GATEWAY_A_PORT" "gateway a"
wait_for_port 127.0.0.1 "$GATEWAY_B_PORT" "gateway b"

start_function() { # name queue-url [args...]
    local name="$1" queue="$2"
    shift 2
    echo "==> starting function $name (log: $RUN_DIR/$name.log)"
    next_metrics "function $name"
    CHAT_QUEUE_URL="$queue" CHAT_METRICS_LISTEN="$METRICS_ADDR" "$BIN/local-runner" "$@" >"$RUN_DIR/$name.log" 2>&1 &
    track $! "function $name"
}
start_function persist "$CHAT_PERSIST_QUEUE_URL" persist
start_function fallback "$CHAT_FALLBACK_QUEUE_URL" fallback
CHAT_QUEUE_PREFIX="$STACK-gw-" start_function janitor "" janitor
# The external channels: a local simulator of their APIs, the webhook it
# calls back (a local function URL), and one connector per channel.
export CHAT_WEBHOOK_LISTEN="127.0.0.1:$WEBHOOK_PORT"
start_function webhook "" webhook
echo "==> starting the channel simulator on 127.0.0.1:$SIMULATOR_PORT (log: $RUN_DIR/channel-sim.log)"
CHAT_SIM_LISTEN="127.0.0.1:$SIMULATOR_PORT" CHAT_SIM_WEBHOOK_URL="http://127.0.0.1:$WEBHOOK_PORT" \
    "$BIN/channel-sim" >"$RUN_DIR/channel-sim.log" 2>&1 &
track $! "channel simulator"
for api in WHATSAPP INSTAGRAM TELEGRAM; do export "CHAT_${api}_API_URL=http://127.0.0.1:$SIMULATOR_PORT"; done
start_function connector-whatsapp "$CHAT_CONNECTOR_WHATSAPP_QUEUE_URL" connector --channel whatsapp
start_function connector-instagram "$CHAT_CONNECTOR_INSTAGRAM_QUEUE_URL" connector --channel instagram
start_function connector-telegram "$CHAT_CONNECTOR_TELEGRAM_QUEUE_URL" connector --channel telegram

GATEWAYS="http://127.0.0.1:$GATEWAY_A_PORT,http://127.0.0.1:$GATEWAY_B_PORT"
WEB_LINE="  (not built: 'make web' builds it into $WEB_DIR)"
if [[ -f "$WEB_DIR/index.html" ]]; then
    echo "==> serving the web app on http://127.0.0.1:$WEB_PORT/ (log: $RUN_DIR/web.log)"
    "$BIN/chat" serve-web --listen "127.0.0.1:$WEB_PORT" --dir "$WEB_DIR" --gateway "$GATEWAYS" --dev-tokens \
        >"$RUN_DIR/web.log" 2>&1 &
    track $! "web"
    wait_for_port 127.0.0.1 "$WEB_PORT" "the web app"
    WEB_LINE="  http://127.0.0.1:$WEB_PORT/?user=alice&conversation=room1
  http://127.0.0.1:$WEB_PORT/?user=bob&conversation=room1&gateway=1   (development sign-in: any name)"
fi
deadline=$((SECONDS + 60))
until run_step "$BIN/chat" echo --gateway "$GATEWAYS" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
        echo "error: the gateways do not answer; see $RUN_DIR/gateway-*.log" >&2
        exit 1
    fi
    sleep 0.2
done

cat <<EOF

The chat platform is running: two gateways on SNS -> per-gateway SQS, and function persist
(messages -> DynamoDB table $CHAT_MESSAGES_TABLE), on the emulator at $AWS_ENDPOINT_URL.

Chat in a browser (one page per user; gateway=1 picks the second gateway):
$WEB_LINE

Chat from two other terminals (in $ROOT), one client per gateway:
  make chat NAME=alice PORT=$GATEWAY_A_PORT ROOM=room1
  make chat NAME=bob   PORT=$GATEWAY_B_PORT ROOM=room1
Type a line to send it; /help lists commands. For the other chat commands (the client is $ROOT/chat),
set up a terminal once:
  export CHAT_GATEWAYS=$GATEWAYS CHAT_JWT_SECRET_FILE=$CHAT_JWT_SECRET_FILE CHAT_USER=alice
then e.g. '$ROOT/chat send -c room1 --body hi', '$ROOT/chat history -c room1'.
Any gRPC client works too: the API is proto/chat.proto (server reflection is on), with
'authorization: Bearer \$($ROOT/chat token --user alice)'.

Metrics (Prometheus text format; the README's "Metrics" section has queries):
$(printf '  %s\n' "${METRICS_URLS[@]}")

Press Ctrl-C to stop everything.
EOF

# Run until Ctrl-C. A process that dies (a crashed or killed gateway) is
# reported and the rest keep running: clients move to the other gateway. The
# pause is a waited-for background sleep, which a signal interrupts at once.
while true; do
    sleep 1 &
    step_pid=$!
    wait "$step_pid" || true
    step_pid=""
    still=()
    for pid in "${running[@]}"; do
        if alive "$pid"; then
            still+=("$pid")
        else
            echo "warning: process $pid (${names[$pid]}) exited; see $RUN_DIR/*.log; the rest keep running" >&2
        fi
    done
    running=("${still[@]}")
    if ((${#running[@]} == 0)); then
        echo "error: every gateway and function runner has exited; see $RUN_DIR/*.log" >&2
        exit 1
    fi
done
