#!/usr/bin/env bash
# inferd beside the peer servers, one run: the shared anchor harness (real Triton 2.51, TorchServe 0.12,
# MLServer 1.7, LitServe, FastAPI baseline; wrk; server on CPU 0, load on CPU 1) with inferd as one more server,
# then the bare-ASGI ceiling. Needs the peers' venvs in /opt/anchors: run
# ../shared/bench/anchors/run_all.sh once (or its install part) first.
#
#   bash benchmarks/compare_peers.sh                # all peers, C=1,8,64, 1 round
#   SERVERS=inferd,torchserve ROUNDS=2 bash benchmarks/compare_peers.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ANCHORS=${ANCHORS:-$HERE/../../shared/bench/anchors}
OUTDIR=${OUTDIR:-$HERE/results}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUTDIR"
export INFERD_BIN=${INFERD_BIN:-$(command -v inferd)}
export SERVERS=${SERVERS:-inferd,triton,torchserve,fastapi,litserve,mlserver}
export ROUNDS=${ROUNDS:-1} CONCS=${CONCS:-1,8,64} DUR=${DUR:-15} WARM=${WARM:-5} WARM2=${WARM2:-5}
export OUT=$OUTDIR/peers-$STAMP.jsonl LOGDIR=${LOGDIR:-/tmp/inferd-peer-logs}
taskset -c "${CLIENT_CPU:-1}" python3 "$ANCHORS/bench.py" 2>&1 | tee "$OUTDIR/peers-$STAMP.log"
if [ "${CEILING:-1}" = 1 ]; then
  for body in mlp_v2 tiny_v2; do
    BODY="$ANCHORS/bodies/$body.json" bash "$ANCHORS/../ceiling/run.sh" 2>/dev/null | grep WRKJSON \
      | sed "s/^/$body /" | tee -a "$OUTDIR/ceiling-$STAMP.txt"
  done
fi
python3 "$HERE/summarize_peers.py" "$OUT" "$OUTDIR/ceiling-$STAMP.txt" | tee "$OUTDIR/peers-$STAMP.md"
