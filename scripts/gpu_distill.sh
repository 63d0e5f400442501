#!/usr/bin/env bash
# Distill several students at once on one rented GPU machine, each inside a fixed time budget.
#
# Why this shape: such a machine is lent for minutes and takes only a few tens of MB along, so the
# photos travel packed (scripts/pack_data.py, then `tar czf train.tgz -C PACKED train`), every run is sized by `distill --minutes`, and the
# best checkpoints and logs are copied to $OUT every 30 s: a cut-off call still brings them back.
# The students augment on the GPU (the photos fit in its memory); a run that fails is retried
# once with CPU augmentation workers for the time left.
#
# Back here: `tar xzf OUT/NAME.tgz -C runs/distill`, then
# `edgecut export runs/distill/NAME/best.pt --calibrate --heldout-data ../shared/data/train ...`.
#
#   MINUTES=8 OUT=/tmp/out scripts/gpu_distill.sh small-c4 "--variant edgecut-small --init ckpt.pt" medium "--variant edgecut-medium"
#
# QAT_MINUTES=2.5 ends each run with that much quantization-aware fine-tuning of its best.pt (in
# NAME-qat, inside the same MINUTES; QAT_ARGS are its extra options, e.g. "--exclude samples"): the
# int8 export then starts from weights that know int8. MINUTES counts training only: unpacking and
# loading the photos add about a minute to each stage, so leave room in the call's own time limit.
# Runs load in parallel and slow each other: five at once took about 2.5 minutes to start on an H200
# box (16 cores), so MINUTES=7 under a 590 s limit cut them before their schedules ended.
set -u
MIN=${MINUTES:-8}
QAT_MIN=${QAT_MINUTES:-0}
OUT=${OUT:-runs/gpu}
DATA=${DATA:-.pack/train}
PY=${PY:-python3}
work=${WORK:-/tmp/edgecut-gpu}
mkdir -p "$work/pkg" "$OUT"
ln -sfn "$PWD" "$work/pkg/edgecut"   # the repo root is the package `edgecut`
export PYTHONPATH="$work/pkg" PYTHONUNBUFFERED=1
if [[ $DATA == *.tgz ]]; then  # one tarball travels lighter than ~9,400 small files
    mkdir -p "$work/data" && tar xzf "$DATA" -C "$work/data" && DATA="$work/data/$(tar tzf "$DATA" | head -1 | cut -d/ -f1)"
fi
end=$(( $(date +%s) + ${MIN%.*} * 60 ))
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

distill() {  # name, minutes, extra args...
    local name=$1 minutes=$2; shift 2
    "$PY" -m edgecut.cli distill --data "$DATA" --out "$work/$name" --minutes "$minutes" --no-progress "$@" \
        >> "$work/$name.out" 2>&1
}

qat() {  # name: fine-tune NAME/best.pt with fake int8 into NAME-qat
    "$PY" -m edgecut.cli compress qat "$work/$1/best.pt" --data "$DATA" --out "$work/$1-qat" \
        --minutes "$QAT_MIN" --no-progress ${QAT_ARGS:-} >> "$work/$1-qat.out" 2>&1
}

run_one() {  # name, args
    local name=$1 args=$2
    local minutes
    minutes=$(python3 -c "print(max(1.0, $MIN - $QAT_MIN))")
    # shellcheck disable=SC2086
    if distill "$name" "$minutes" $args; then
        python3 -c "import sys; sys.exit(not $QAT_MIN > 0)" && qat "$name"
        return 0
    fi
    local left=$(( (end - $(date +%s)) / 60 ))
    echo "$name: failed; retrying with 4 CPU augmentation workers for ${left} min" >> "$work/$name.out"
    rm -rf "${work:?}/$name"
    [ "$left" -ge 1 ] && distill "$name" "$left" $args --workers 4
}

copy_back() {  # one tarball per run (best.pt, log, config, split): few files travel back
    for d in "$work"/*/; do
        local name; name=$(basename "$d")
        case $name in pkg|data) continue;; esac
        tar czf "$OUT/$name.tgz.tmp" -C "$work" --exclude=last.pt --exclude='*.tmp' "$name" 2>/dev/null \
            && mv "$OUT/$name.tgz.tmp" "$OUT/$name.tgz"
    done
    tail -n 5 "$work"/*.out > "$OUT/stdout.txt" 2>/dev/null
}

pids=()
while [ $# -ge 2 ]; do
    run_one "$1" "$2" &
    pids+=($!)
    shift 2
done
tick=0
while kill -0 "${pids[@]}" 2>/dev/null; do  # kill -0 of several pids: true while any one runs
    sleep 2; tick=$((tick + 1)); [ $((tick % 15)) -eq 0 ] && copy_back
done
wait
copy_back
cat "$work"/*.out
