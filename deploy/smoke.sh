#!/usr/bin/env bash
# After `docker compose --profile cpu up -d` (or gpu): is the model served, and does it answer an image?
#   ./smoke.sh face.jpg [HOST]        (MODEL_NAME as for docker compose; default faces)
set -euo pipefail
image="${1:?usage: ./smoke.sh IMAGE [HOST]}"
host="${2:-localhost}"
name="${MODEL_NAME:-faces}"
for attempt in $(seq 1 30); do   # the server loads and warms the model up first
  if curl -sf "http://${host}:8501/v1/models/${name}" > /dev/null; then break; fi
  if [ "$attempt" -eq 30 ]; then echo "smoke: ${name} not available at http://${host}:8501 after 60 s" >&2; exit 1; fi
  sleep 2
done
echo "model status: $(curl -s "http://${host}:8501/v1/models/${name}" | tr -d '\n ')"
kfacemtl predict --server "${host}:8500" --model "${name}" "$image"              # gRPC
kfacemtl predict --server "${host}:8501" --rest --model "${name}" --label stable "$image"   # REST, a version label
echo "smoke: ${name} answers over gRPC and REST"
