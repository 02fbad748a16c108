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
#
# A local SOURCE or DEST given as a relative path is made absolute here (the job runs in its uploaded
# working directory, where a relative path would name another folder); it must be on a filesystem
# every node of the cluster sees.
#
# Clusters with token authentication (Ray >= 2.59 on local clusters, all from 2.61): export
# RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as for the cluster. The address is
# checked before submitting: a cluster that wants a token, or no dashboard there, is one line (exit 2).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 SOURCE DEST [convert flags...]" >&2
    exit 2
fi
ADDRESS="${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-http://127.0.0.1:8265}}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

absolute() {  # a local path made absolute (from the caller's folder); URLs as given
    python3 -c 'import os, sys; p = sys.argv[1]; print(p if "://" in p or os.path.isabs(p) else os.path.abspath(p))' "$1"
}
SOURCE="$(absolute "$1")"
DEST="$(absolute "$2")"
shift 2

python3 - "$ADDRESS" <<'PY' || exit 2
import os, sys, urllib.error, urllib.request
address = sys.argv[1].rstrip("/")
url = (address if "://" in address else "http://" + address) + "/api/version"
token = os.environ.get("RAY_AUTH_TOKEN")
if not token and os.environ.get("RAY_AUTH_TOKEN_PATH"):
    try:
        token = open(os.path.expanduser(os.environ["RAY_AUTH_TOKEN_PATH"])).read().strip()
    except OSError as exc:
        sys.exit(f"submit.sh: error: cannot read RAY_AUTH_TOKEN_PATH ({exc.strerror or exc})")
headers = {"Authorization": f"Bearer {token}"} if token else {}
try:
    urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).close()
except urllib.error.HTTPError as exc:
    if exc.code in (401, 403):
        what = "rejected the token given" if token else "requires a token"
        sys.exit(f"submit.sh: error: the Ray cluster at {address} {what}: export RAY_AUTH_MODE=token and "
                 "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as for the cluster")
except (OSError, ValueError) as exc:
    reason = getattr(exc, "reason", None) or exc
    sys.exit(f"submit.sh: error: no Ray dashboard answers at {address} ({reason}): set RAY_API_SERVER_ADDRESS "
             "to the head's dashboard (http://HEAD:8265)")
PY

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
    -- python workers/entrypoint.py "$SOURCE" "$DEST" "$@"
