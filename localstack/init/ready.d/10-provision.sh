#!/bin/bash
# LocalStack ready.d hook: once the emulator accepts requests, create the
# resources that template.yaml declares (see ../../provision.py). A non-zero
# exit marks this script ERROR, which keeps the compose healthcheck failing.
# python3 here is LocalStack's own venv interpreter, which has boto3 and PyYAML.
set -euo pipefail

exec python3 /etc/localstack/chat/provision.py \
  --template /etc/localstack/chat/template.yaml \
  --endpoint http://localhost:4566 \
  --region "${AWS_DEFAULT_REGION:-us-east-1}" \
  --stack-name "${CHAT_STACK_NAME:-chat}"
