#!/usr/bin/env bash
# The one prepared device check of issue 19, for a session that is lent a GPU:
#   1. `zsk bench` of one paper recipe per task (two for retrieve), in the recipe's official precision and in
#      bf16, one JSON line each in $OUT/bench.jsonl as soon as it finishes (a cut-short run keeps what it
#      measured); segment/voc's inference line is ZegCLIP's single-image 512x512 FPS (paper: 9.0 on a 1080Ti);
#   2. a short full-size training run: DTC on real LA cases (medseg/la_16 at 112x112x80 patches, batch 4), a few
#      hundred iterations and the sliding-window Dice on held-out cases ($OUT/medseg_train.json).
#
# Here, once (downloads the wheels the device image lacks and copies 16 preprocessed LA cases of a DTC checkout,
# about 50 MB, into .gpucheck/, which git ignores through .git/info/exclude):
#   bash tools/gpu_check.sh prepare /path/to/DTC
# Then one device call with carry [".gpucheck"] and a timeout that leaves time for a rerun:
#   bash tools/gpu_check.sh                     # OUT=$OUT on the device; STEPS, RECIPES, BENCH_TIMEOUT, TRAIN_STEPS
# Locally, as a dry run of the script on the CPU: DEVICE=cpu RECIPES="retrieve/demo" TRAIN_STEPS=2 bash tools/gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
    dtc=${2:?usage: tools/gpu_check.sh prepare /path/to/DTC (its data/2018LA_Seg_Training Set holds the LA cases)}
    src="$dtc/data/2018LA_Seg_Training Set"
    [ -f "$src/train.list" ] && [ -f "$src/test.list" ] || { echo "error: $src has no train.list/test.list" >&2; exit 2; }
    grep -qx '/.gpucheck/' .git/info/exclude 2>/dev/null || echo '/.gpucheck/' >> .git/info/exclude
    rm -rf .gpucheck && mkdir -p .gpucheck/whl .gpucheck/la
    # pure-Python packages zsk needs that the device image does not hold (its torch, transformers, timm, h5py are used)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .gpucheck/whl open_clip_torch ftfy wcwidth nltk nibabel spectral || exit 1
    # 12 training cases (the first 3 labelled, as la_16's 20 %) and 4 test cases, in the DTC layout
    head -12 "$src/train.list" > .gpucheck/la/train.list
    head -4 "$src/test.list" > .gpucheck/la/test.list
    for case in $(cat .gpucheck/la/train.list .gpucheck/la/test.list); do
        mkdir -p ".gpucheck/la/$case" && cp "$src/$case/mri_norm2.h5" ".gpucheck/la/$case/" || exit 1
    done
    du -sh .gpucheck
    exit 0
fi

OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-5}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-75}
TRAIN_STEPS=${TRAIN_STEPS:-300}
RECIPES=${RECIPES:-"segment/voc retrieve/f30k_vsepp_lseh retrieve/f30k_sgr_lseh sbir/sketchy21 css/voc_15-1 refer/refcoco
fakenews/constraint_fusion adapt/gtav2cs_2.2 contrast/cifar10_alexnet medseg/la_16 gzsl/imagenet_dgp hsi/indian_pines"}
export PYTHONUNBUFFERED=1
if ls .gpucheck/whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/zsk_site \
        .gpucheck/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/zsk_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
zsk() { $PY -m zsk "$@"; }

{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/device.txt" 2>&1

for r in $RECIPES; do
    for prec in official bf16; do
        extra=()
        [ "$prec" = bf16 ] && extra=(--set runtime.precision=bf16)
        start=$(date +%s)
        line=$(timeout "$BENCH_TIMEOUT" "$PY" -m zsk bench -r "$r" --steps "$STEPS" --device "$DEVICE" --json \
               "${extra[@]}" 2>>"$OUT/bench.log" | tail -1)
        rc=$?
        if [ $rc -eq 0 ] && [ "${line:0:1}" = "{" ]; then
            echo "{\"run\": \"$prec\", ${line:1}" >> "$OUT/bench.jsonl"
        else
            echo "{\"run\": \"$prec\", \"recipe\": \"$r\", \"error\": \"exit $rc after $(( $(date +%s) - start )) s (bench.log)\"}" \
                >> "$OUT/bench.jsonl"
        fi
        echo "bench $r $prec: exit $rc, $(( $(date +%s) - start )) s"
    done
done

if [ -f .gpucheck/la/train.list ]; then
    start=$(date +%s)
    zsk medseg train --recipe medseg/la_16 --device "$DEVICE" --out "$OUT/medseg_run" --quiet --json \
        --set data.root="$PWD/.gpucheck/la" --set data.labeled_num=3 --set train.max_steps="$TRAIN_STEPS" \
        > "$OUT/medseg_train.json" 2>"$OUT/medseg_train.log"
    echo "medseg la_16 short run ($TRAIN_STEPS steps, 12 train / 4 test cases): exit $?, $(( $(date +%s) - start )) s"
    # checkpoints do not come back (16 MiB a file, 2 folders down); the summary and the step log do
    cp "$OUT/medseg_run/metrics.jsonl" "$OUT/medseg_metrics.jsonl" 2>/dev/null
    rm -rf "$OUT/medseg_run"
else
    echo "no .gpucheck/la (run 'tools/gpu_check.sh prepare DTC_DIR' here first): no training run"
fi
