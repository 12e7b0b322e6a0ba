#!/usr/bin/env bash
# The device checks on a lent GPU, in one go. Issue 30's first: (e) a cnn-small chain started on
# the CPU, SIGKILLed and resumed on CUDA (channels-last, fused SGD: the momentum re-laid), (f) a
# deterministic = true chain killed and resumed, compared bit for bit with an uninterrupted one
# (bench/resume_check.py); then issue 7's: (a) engine step vs bare loop, (b) BAN step vs CE step,
# (c) fast path vs plain fp32 DataLoader (WRN-28-10, DenseNet-BC-90-60), (d) the cifar10-fast chain
# on all 50k CIFAR-10 images; last (g) how long last.pt holds training up, in place or in the
# background (bench/checkpoint_stall.py). Each part has its own time limit (12 minutes at most in
# all, about 8 expected); PARTS picks some (default "e f a b c d g"), e.g. two commands under a
# 10-minute limit: PARTS="e f d g" then PARTS="a b c". Every log lands in $OUT (the device tool brings it back).
#
#   bash bench/device_check.sh            # from the repository root, on the device machine
#   SMOKE=1 OUT=/tmp/x PYTHON=.venv/bin/python bash bench/device_check.sh   # here: tiny sizes on the CPU
#
# What the machine needs: python3 with torch, torchvision, pillow, numpy, scikit-learn (the
# device image has them) and tomlkit (it has not: carry its wheel in .whl/, see
# /work/.library/device/README.md); the 50k JPEG set, which does not travel from ../shared:
#   echo /.data/ >> .git/info/exclude; mkdir -p .data/cifar10
#   cp /work/shared/data/cifar10/train50k_test2k_jpeg.npz .data/cifar10/     # then carry .data (and .whl)
# It is decoded once into train.npz / test.npz (50,000 / 2,000), which (a)-(c) read too.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ban-device-out}
PY=${PYTHON:-python3}
RUNS=${RUNS:-/tmp/ban-device}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! $PY -c "import tomlkit" 2>/dev/null && ls .whl/tomlkit-*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/tomlkit-*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; $PY -c "import torch; print('torch', torch.__version__)"; } \
    2>&1 | tee "$OUT/env.log"

PARTS=" ${PARTS:-e f a b c d g} "
JPEG=${BAN_CIFAR10_JPEG:-.data/cifar10/train50k_test2k_jpeg.npz}
[ -f "$JPEG" ] || JPEG=/work/shared/data/cifar10/train50k_test2k_jpeg.npz
if [[ "$PARTS" != *[abcd]* ]]; then
    echo "PARTS=$PARTS: no CIFAR-10 needed" | tee "$OUT/data.log"
elif [ -f "$JPEG" ]; then
    t0=$(date +%s)
    $PY -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; from fast_chain import decode_jpeg; \
decode_jpeg(Path('$RUNS/data-50k'), source=Path('$JPEG'))" && export BAN_CIFAR10="$RUNS/data-50k"
    echo "decoded $JPEG in $(( $(date +%s) - t0 )) s" | tee "$OUT/data.log"
else
    echo "no CIFAR-10 JPEG set: (a)-(c) use random images, (d) is skipped" | tee "$OUT/data.log"
fi

SMOKE=${SMOKE:-}
TINY=${SMOKE:+--steps 2 --repeats 1 --batch-size 16 --device cpu}   # the last of a repeated option wins
part() {   # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log (if PARTS has its letter)
    local name=$1 limit=$2; shift 2
    [[ "$PARTS" == *" ${name%%_*} "* ]] || return 0
    [ -n "$SMOKE" ] && limit=600
    echo "=== $name (limit ${limit}s): $*"
    local t0=$(date +%s)
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
}

DEVICE=${SMOKE:+cpu}
part e_cpu_to_cuda_resume 90 $PY bench/resume_check.py cpu-to-cuda --runs-dir "$RUNS/resume" --device "${DEVICE:-cuda}"
part f_deterministic_resume 150 $PY bench/resume_check.py deterministic --runs-dir "$RUNS/resume" --device "${DEVICE:-cuda}"
part a_step_overhead 60 $PY bench/step_overhead.py --model preact-resnet-8 --batch-size 128 --steps 40 --repeats 3 $TINY
part a_step_overhead_airbench 45 $PY bench/step_overhead.py --model airbench --batch-size 1024 --steps 20 --repeats 3 $TINY
part b_teacher_cost 75 $PY bench/teacher_cost.py --model preact-resnet-18 --batch-size 256 --steps 30 --repeats 3 $TINY
part c_gpu_throughput 140 $PY bench/gpu_throughput.py --models wrn-28-10 densenet-bc-90-60 --batch-size 128 --steps 30 \
    --workers 12 ${SMOKE:+--smoke}
if [ -f "$JPEG" ]; then
    part d_fast_chain 130 $PY bench/fast_chain.py --data full --jpeg "$JPEG" --runs-dir "$RUNS" ${SMOKE:+--smoke}
fi
part g_checkpoint_stall 40 $PY bench/checkpoint_stall.py --model wrn-28-10 --dir "$RUNS" ${SMOKE:+--device cpu --model wrn-10-1}
