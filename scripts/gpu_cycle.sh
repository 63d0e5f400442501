#!/usr/bin/env bash
# The next people-weighted cycle of the default, from its shipped file, in three steps.
#
# Why a script: a lent GPU machine counts minutes, including the ones spent typing. Everything that
# can happen here happens in `prepare`; the device call is one line (`run`); `finish` joins the
# results and scores them the way the training log's cycles were scored, so no step is improvised.
#
#   scripts/gpu_cycle.sh prepare            # here: MediaPipe labels, packed photos, the recovered members
#   scripts/gpu_cycle.sh run                # on the device (in the `run` tool): four fine-tunes, ~9 min
#   scripts/gpu_cycle.sh finish DIR         # here, DIR = what came back (NAME.tgz per run)
#
# `run` is the recipe of the third cycle (docs/training-log.md, "A third people-weighted cycle"): per
# member, one run drawing the people photos 4x and one 6x with a few printed subjects, souped after.
# `finish` never embeds: it writes runs/cycle/export/duo-int8 and prints its held-out and bench scores
# beside the shipped file's; ship it with `edgecut export ... --embed --default` only if both gain.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PY=${PY:-$BIN/python}
DATA_ROOT=${EDGECUT_DATA:-../shared/data}
MP_LABELS=.cache/labels/mp
PORTRAITS=portrait_shen2016_nontest
TEACHER="IS-Net, img.ly @imgly/background-removal-data@1.4.5 '/models/medium' (fp16), AGPL-3.0, for every training set but $PORTRAITS, whose photos MediaPipe Selfie Segmentation labelled instead (@mediapipe/selfie_segmentation@0.1.1675465747, the 256x256 square model, Apache-2.0); both used only to label training photos, none of their weights are shipped"

prepare() {
    "$BIN/edgecut" fetch-peer mediapipe-selfie >/dev/null
    "$BIN/edgecut" label --teacher "$HOME/.cache/edgecut/peers/mediapipe-selfie" \
        "$DATA_ROOT/train/$PORTRAITS/images" --out "$MP_LABELS/$PORTRAITS/teacher"
    [ -d .pack/train ] || "$PY" scripts/pack_data.py "$DATA_ROOT/train" .pack/train \
        --label-root "$MP_LABELS" --exclude samples --thin caltech101
    mkdir -p .packed
    tar czf .packed/train.tgz.tmp -C .pack train && mv .packed/train.tgz.tmp .packed/train.tgz
    "$BIN/edgecut" compress recover edgecut-duo --out runs/cycle/rec
    cp runs/cycle/rec/member0-320/best.pt .packed/m320.pt
    cp runs/cycle/rec/member1-192/best.pt .packed/m192.pt
    du -ch .packed/train.tgz .packed/m320.pt .packed/m192.pt | tail -1 | sed 's/total/to carry (64 MiB at most)/'
    echo "next, on the device: run(command=\"scripts/gpu_cycle.sh run\", carry=[\".packed\"], timeout_s=600)"
}

run() {   # on the device: torch sees the GPU there; $OUT is what comes back
    local W4="--set-weight $PORTRAITS=4 --set-weight ccp_unlabeled=4"
    local W6="--set-weight $PORTRAITS=6 --set-weight ccp_unlabeled=6"
    local C="--variant edgecut-medium --lr 1e-3 --warmup 100 --eval-every 250 --ckpt-every 250"
    MINUTES=${MINUTES:-6.25} DATA=.packed/train.tgz OUT="${OUT:-out}" PY=${PY_DEVICE:-python3} scripts/gpu_distill.sh \
        acc61 "$C $W4 --init .packed/m320.pt --input-size 320 --pattern-bg 0.3 --seed 61" \
        acc62 "$C $W6 --init .packed/m320.pt --input-size 320 --pattern-bg 0.3 --print-fg 0.1 --seed 62" \
        fast61 "$C $W4 --init .packed/m192.pt --input-size 192 --pattern-bg 0.5 --seed 61" \
        fast62 "$C $W6 --init .packed/m192.pt --input-size 192 --pattern-bg 0.5 --print-fg 0.1 --seed 62"
}

finish() {
    local back=${1:?the folder that came back from the device}
    local runs=runs/cycle/gpu
    mkdir -p "$runs"
    for name in acc61 acc62 fast61 fast62; do
        [ -f "$back/$name.tgz" ] || { echo "$back/$name.tgz: missing (the run did not come back)" >&2; exit 1; }
        tar xzf "$back/$name.tgz" -C "$runs"
    done
    "$BIN/edgecut" compress soup "$runs/acc61/best.pt" "$runs/acc62/best.pt" --out runs/cycle/acc-soup
    "$BIN/edgecut" compress soup "$runs/fast61/best.pt" "$runs/fast62/best.pt" --out runs/cycle/fast-soup
    "$BIN/edgecut" compress ensemble runs/cycle/acc-soup/best.pt@320 runs/cycle/fast-soup/best.pt@192 \
        --out runs/cycle/duo --name edgecut-duo --heldout-data .pack/train
    "$BIN/edgecut" export runs/cycle/duo/best.pt --name duo --out runs/cycle/export --teacher "$TEACHER" \
        --int8 --calibrate --heldout-data .pack/train --calib "$DATA_ROOT/train" --calib-n 128
    "$PY" scripts/heldout_score.py .pack/train edgecut-duo runs/cycle/export/duo-int8
    "$BIN/edgecut" bench accuracy --data "$DATA_ROOT/bench" --model edgecut-duo --model runs/cycle/export/duo-int8 \
        --threads 2 --no-progress --json runs/cycle/accuracy.json
    echo "ship it only if held-out and bench both gain: edgecut export runs/cycle/duo/best.pt --name edgecut-duo" \
         "--teacher \"\$TEACHER\" --notes \"...\" --int8 --calibrate --heldout-data .pack/train" \
         "--calib $DATA_ROOT/train --calib-n 128 --embed --default"
}

case ${1:-} in
    prepare) prepare ;;
    run) run ;;
    finish) shift; finish "$@" ;;
    *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
