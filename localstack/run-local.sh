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
# 4. two gateways on the sns-sqs bus, on $GATEWAY_A_PORT and $GATEWAY_B_PORT.
# Ctrl-C stops the gateways gracefully (their queues are deleted), then the
# emulator. Logs are under .run/.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${CHAT_PYTHON:?set CHAT_PYTHON to the python of the emulator environment (make run does)}"
BIN="${CHAT_BIN_DIR:-$ROOT/target/debug}"
RUN_DIR="$ROOT/.run"
EMULATOR_PORT="${EMULATOR_PORT:-4566}"
GATEWAY_A_PORT="${GATEWAY_A_PORT:-50051}"
GATEWAY_B_PORT="${GATEWAY_B_PORT:-50052}"
WEBHOOK_PORT="${WEBHOOK_PORT:-8091}"
SIMULATOR_PORT="${SIMULATOR_PORT:-8090}"
STACK="${CHAT_STACK_NAME:-chat}"
mkdir -p "$RUN_DIR"

export AWS_REGION="${AWS_REGION:-us-east-1}"
# Emulators accept any credentials; real ones in the environment win.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"

pids=()
declare -A names
emulator_pid=""
stop() {
    trap - INT TERM EXIT
    echo
    echo "==> stopping gateways (their queues and subscriptions are deleted) and function runners"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "$emulator_pid" ]]; then
        echo "==> stopping the emulator"
        kill -TERM "$emulator_pid" 2>/dev/null || true
        wait "$emulator_pid" 2>/dev/null || true
    fi
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

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

if [[ -z "${AWS_ENDPOINT_URL:-}" ]]; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$EMULATOR_PORT") 2>/dev/null; then
        echo "error: port $EMULATOR_PORT is taken; set EMULATOR_PORT, or AWS_ENDPOINT_URL to use that emulator" >&2
        exit 1
    fi
    echo "==> starting moto server on 127.0.0.1:$EMULATOR_PORT (log: .run/emulator.log)"
    # Its own session: Ctrl-C reaches the gateways first; the emulator is
    # stopped after they have deleted their queues.
    setsid "$PY" localstack/moto_server.py -H 127.0.0.1 -p "$EMULATOR_PORT" >"$RUN_DIR/emulator.log" 2>&1 &
    emulator_pid=$!
    export AWS_ENDPOINT_URL="http://127.0.0.1:$EMULATOR_PORT"
    wait_for_port 127.0.0.1 "$EMULATOR_PORT" "moto server"
else
    echo "==> using the emulator at $AWS_ENDPOINT_URL"
fi

echo "==> provisioning template.yaml as stack '$STACK'"
outputs="$("$PY" localstack/provision.py --template template.yaml --endpoint "$AWS_ENDPOINT_URL" \
    --region "$AWS_REGION" --stack-name "$STACK" --format env)"
while IFS='=' read -r key value; do
    [[ -n "$key" ]] && export "$key=$value"
done <<<"$outputs"

export CHAT_JWT_SECRET_FILE="$RUN_DIR/jwt-secret"
export CHAT_BUS=sns-sqs
export CHAT_QUEUE_PREFIX="$STACK-gw-"
# The shared development secret exists before either gateway starts.
if [[ ! -s "$CHAT_JWT_SECRET_FILE" ]]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_urlsafe(48))' >"$CHAT_JWT_SECRET_FILE")
fi
start_gateway() { # name port
    echo "==> starting gateway $1 on 127.0.0.1:$2 (log: .run/gateway-$1.log)"
    CHAT_INSTANCE_ID="local-$1" CHAT_LISTEN="127.0.0.1:$2" \
        "$BIN/gateway" >"$RUN_DIR/gateway-$1.log" 2>&1 &
    pids+=($!)
    names[$!]="gateway $1"
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
    echo "==> starting function $name (log: .run/$name.log)"
    CHAT_QUEUE_URL="$queue" "$BIN/local-runner" "$@" >"$RUN_DIR/$name.log" 2>&1 &
    pids+=($!)
    names[$!]="function $name"
}
start_function persist "$CHAT_PERSIST_QUEUE_URL" persist
start_function fallback "$CHAT_FALLBACK_QUEUE_URL" fallback
CHAT_QUEUE_PREFIX="$STACK-gw-" start_function janitor "" janitor
# The external channels: a local simulator of their APIs, the webhook it
# calls back (a local function URL), and one connector per channel.
export CHAT_WEBHOOK_LISTEN="127.0.0.1:$WEBHOOK_PORT"
start_function webhook "" webhook
echo "==> starting the channel simulator on 127.0.0.1:$SIMULATOR_PORT (log: .run/channel-sim.log)"
CHAT_SIM_LISTEN="127.0.0.1:$SIMULATOR_PORT" CHAT_SIM_WEBHOOK_URL="http://127.0.0.1:$WEBHOOK_PORT" \
    "$BIN/channel-sim" >"$RUN_DIR/channel-sim.log" 2>&1 &
pids+=($!)
names[$!]="channel simulator"
for api in WHATSAPP INSTAGRAM TELEGRAM; do export "CHAT_${api}_API_URL=http://127.0.0.1:$SIMULATOR_PORT"; done
start_function connector-whatsapp "$CHAT_CONNECTOR_WHATSAPP_QUEUE_URL" connector --channel whatsapp
start_function connector-instagram "$CHAT_CONNECTOR_INSTAGRAM_QUEUE_URL" connector --channel instagram
start_function connector-telegram "$CHAT_CONNECTOR_TELEGRAM_QUEUE_URL" connector --channel telegram

for port in "$GATEWAY_A_PORT" "$GATEWAY_B_PORT"; do
    deadline=$((SECONDS + 60))
    until "$BIN/chat" echo --gateway "http://127.0.0.1:$port" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "error: gateway on port $port does not answer; see .run/gateway-*.log" >&2
            exit 1
        fi
        sleep 0.2
    done
done

cat <<EOF

The chat platform is running: two gateways on SNS -> per-gateway SQS, and function persist
(messages -> DynamoDB table $CHAT_MESSAGES_TABLE), on the emulator at $AWS_ENDPOINT_URL.

Chat from two other terminals (in $ROOT), one client per gateway:
  make chat NAME=alice PORT=$GATEWAY_A_PORT ROOM=room1
  make chat NAME=bob   PORT=$GATEWAY_B_PORT ROOM=room1
or directly:
  $BIN/chat connect --gateway http://127.0.0.1:$GATEWAY_A_PORT --user alice --conversation room1
Type a line to send it; /help lists commands. Any gRPC client works too: the API is proto/chat.proto
(server reflection is on), with 'authorization: Bearer \$($BIN/chat token --user alice)'.

Press Ctrl-C to stop everything.
EOF

# Run until Ctrl-C. A process that dies (a crashed or killed gateway) is
# reported and the rest keep running: clients move to the other gateway.
while ((${#pids[@]} > 0)); do
    wait -n -p exited "${pids[@]}" || true
    echo "warning: process $exited (${names[$exited]:-?}) exited; see .run/*.log; the rest keep running" >&2
    remaining=()
    for pid in "${pids[@]}"; do [[ "$pid" != "$exited" ]] && remaining+=("$pid"); done
    pids=("${remaining[@]}")
done
echo "error: every gateway and function runner has exited; see .run/*.log" >&2
exit 1
