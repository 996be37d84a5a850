#!/usr/bin/env bash
# `make test-localstack`: the end-to-end suite against LocalStack.
# - With a Docker engine: every test starts its own pinned LocalStack
#   container (SNS, SQS and DynamoDB) through testcontainers.
# - Without one (CI here): LocalStack itself in host mode
#   (`python -m localstack.runtime.main` with SERVICES=sns,sqs), DynamoDB
#   served by moto through AWS_ENDPOINT_URL_DYNAMODB. Both run on free
#   loopback ports and are stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
LS_PY="${LOCALSTACK_PYTHON:?set LOCALSTACK_PYTHON to the python of the LocalStack environment (make does)}"
MOTO_PY="${CHAT_PYTHON:?set CHAT_PYTHON to the python of the moto environment (make does)}"
CARGO="${CARGO:-cargo}"
SUITE=(--test aws --test persist --test channels --test janitor --test generic_client --test store --test durability --test routing)
# `--workspace` with `--test` runs only these suites, with the features the
# whole workspace resolves to: the same artifacts `make test-rust` built
# (`-p chat-e2e` alone resolves tokio, serde and others differently and
# rebuilds most of the dependency graph).

if [[ "${CHAT_LOCALSTACK_MODE:-auto}" != host ]] && docker info >/dev/null 2>&1; then
    echo "==> LocalStack 4.14.0 in Docker (testcontainers), one container per test"
    exec env CHAT_EMULATOR=localstack-docker "$CARGO" test --workspace --locked "${SUITE[@]}"
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$MOTO_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # url what
    local deadline=$((SECONDS + 90))
    until "$MOTO_PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "error: $2 did not answer at $1 within 90 s; its log:" >&2
            tail -30 "$3" >&2
            exit 1
        fi
        sleep 0.5
    done
}

ls_port="$(free_port)"
ddb_port="$(free_port)"
echo "==> LocalStack 4.9.2 (host mode, SNS+SQS) on 127.0.0.1:$ls_port; moto (DynamoDB) on 127.0.0.1:$ddb_port"
setsid env GATEWAY_LISTEN="127.0.0.1:$ls_port" SERVICES=sns,sqs DNS_ADDRESS=0 SKIP_SSL_CERT_DOWNLOAD=1 \
    DISABLE_EVENTS=1 LOCALSTACK_VOLUME_DIR="$work/volume" TMPDIR="$work" \
    "$LS_PY" -m localstack.runtime.main >"$work/localstack.log" 2>&1 &
pids+=($!)
setsid "$MOTO_PY" localstack/moto_server.py -H 127.0.0.1 -p "$ddb_port" >"$work/moto.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$ls_port/_localstack/health" LocalStack "$work/localstack.log"
wait_http "http://127.0.0.1:$ddb_port/moto-api/" moto "$work/moto.log"

AWS_ENDPOINT_URL="http://127.0.0.1:$ls_port" AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$ddb_port" \
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
    "$CARGO" test --workspace --locked "${SUITE[@]}"
