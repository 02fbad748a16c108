#!/usr/bin/env bash
# Submit a conversion to a running Ray cluster through the Jobs API (the dashboard port, 8265).
#
#   RAY_API_SERVER_ADDRESS=http://HEAD:8265 deploy/submit.sh s3://bucket/raw s3://bucket/shards \
#       --size 224 --format both --resizer learned --decoder dali
#
# Everything after DEST goes to `resize-pipeline convert`; workers/entrypoint.py adds
# `--engine ray --address auto`. This checkout is uploaded as the job's working dir, so the driver and
# every actor run this code; the cluster image must already hold the dependencies (deploy/Dockerfile).
# RESIZE_PIPELINE_RAY_* variables set here (actor sizing, see docs/ray.md) are passed to the job.
# Rerunning the same command resumes from the shards already complete in DEST.
# Clusters with token authentication (Ray >= 2.59 on local clusters): export RAY_AUTH_MODE=token and
# RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH as for the cluster.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 SOURCE DEST [convert flags...]" >&2
    exit 2
fi
ADDRESS="${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-http://127.0.0.1:8265}}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

RUNTIME_ENV="$(python3 - <<'PY'
import json, os
env = {k: v for k, v in os.environ.items() if k.startswith("RESIZE_PIPELINE_RAY_")}
print(json.dumps({
    "excludes": [".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".benchmarks", "__pycache__",
                 "*.egg-info", "demo_out", "out"],
    "env_vars": env,
}))
PY
)"

cd "$ROOT"
exec ray job submit \
    --address "$ADDRESS" \
    --working-dir . \
    --runtime-env-json "$RUNTIME_ENV" \
    ${SUBMISSION_ID:+--submission-id "$SUBMISSION_ID"} \
    -- python workers/entrypoint.py "$@"
