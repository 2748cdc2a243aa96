#!/usr/bin/env bash
# One lent-GPU session of the gpu-fcdn56 run, on the device machine (train/README.md, "On a lent GPU").
#   bash train/gpu_run.sh MINUTES [train.train options; a --set given here wins over the GPU settings below]
# It resumes train/runs/gpu-fcdn56, which must travel with the tree (commit it first: an untracked run folder
# left on the machine by an earlier call is wiped by the next copy). Only START_FROM=<run> starts it anew
# from that run's last checkpoint: a missing checkpoint never silently restarts from an older one.
# Everything worth keeping lands in $OUT: the log, and the run folder as a tar split under the 16 MiB-per-file
# limit of what comes back. A hard timeout leaves time for the packing even if an epoch overruns.
# PROFILE=1 first times where an epoch's time goes (benchmarks/train_throughput.py), inside the same budget;
# TRY_COMPILE=1 with it also times compiled steps and trains compiled if they are over 15% faster.
# CALL_SECONDS (default 590) caps the whole script, so that it ends inside the device tool's 10-minute call even
# when the profile or an epoch runs long: training gets what is left of it after the packing's margin.
set -u
call_seconds=${CALL_SECONDS:-590}
minutes=${1:?minutes}
shift
run=train/runs/gpu-fcdn56
out=${OUT:?OUT must name the folder that comes back}
mkdir -p "$run"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/train.log"
if [ -n "${START_FROM:-}" ]; then
    [ -f "$run/last.pt" ] && { echo "$run already holds a run; unset START_FROM to resume it" | tee -a "$out/train.log"; exit 2; }
    cp "train/runs/$START_FROM/last.pt" "train/runs/$START_FROM/metrics.jsonl" "train/runs/$START_FROM/sessions.jsonl" "$run/"
elif [ ! -f "$run/last.pt" ]; then
    echo "$run/last.pt is missing: commit the run folder so it travels, or set START_FROM" | tee -a "$out/train.log"
    exit 2
fi
# The run's saved config holds its CPU-session settings; these are its GPU ones (one H200, 14 data workers).
# The epoch is 20 of the CPU's so that validation and the worker start-up stay a small share of the time.
gpu_settings=(--set batch_size=32 --set num_workers=14 --set samples_per_epoch=10000 --set lr_decay=0.93)
profile() {  # SECONDS_LIMIT [benchmark options]: logs the benchmark and prints its optimiser steps' samples/s
    local limit=$1
    shift
    PYTHONUNBUFFERED=1 PYTHONPATH=. timeout "$limit" python3 benchmarks/train_throughput.py --run-dir "$run" \
        --data-root data_cache --device "${DEVICE:-cuda}" "${gpu_settings[@]}" "$@" 2>&1 | tee -a "$out/train.log" \
        | sed -n 's/^steps (.*): \([0-9]*\) samples\/s$/\1/p'
}
if [ -n "${PROFILE:-}" ]; then
    # About a minute: the loaders alone, the steps alone (with the operators that take their time) and validation.
    eager_rate=$(profile 180 --kernels 15)
    if [ -n "${TRY_COMPILE:-}" ]; then
        # The steps limit a GPU epoch (train/README.md); compiling them may fuse the memory-bound passes. Train
        # compiled only if that measurably pays: a failed or slower compile leaves the run as it was.
        # Validation stays eager whatever the steps do, and the eager profile has timed it already.
        compiled_rate=$(profile 300 --no-validation --set 'compile="inductor"')
        if python3 -c "import sys; sys.exit(0 if ${compiled_rate:-0} > 1.15 * ${eager_rate:-0} > 0 else 1)"; then
            gpu_settings+=(--set 'compile="inductor"')
        fi
        echo "optimiser steps: eager ${eager_rate:-?}, compiled ${compiled_rate:-?} samples/s; training with: ${gpu_settings[*]}" \
            | tee -a "$out/train.log"
    fi
fi
# Packing and the return transfer need about 40 s; an epoch that overruns --max-minutes gets up to 75 s more.
left=$((call_seconds - SECONDS - 40))
limit=$(python3 -c "print(int(min($minutes * 60 + 75, $left)))")
minutes=$(python3 -c "print(round(min($minutes, ($left - 75) / 60), 2))")
echo "training for $minutes minutes, hard limit ${limit} s" | tee -a "$out/train.log"
PYTHONUNBUFFERED=1 PYTHONPATH=. timeout "$limit" python3 -m train.train --run-dir "$run" --resume \
    --data-root data_cache --device "${DEVICE:-cuda}" --max-minutes "$minutes" --epochs 100000 "${gpu_settings[@]}" "$@" 2>&1 | tee -a "$out/train.log"
last_grid=$(ls "$run/grids" 2>/dev/null | tail -1)
[ -n "$last_grid" ] && cp "$run/grids/$last_grid" "$out/"
tar -cf - -C train/runs --exclude grids --exclude '*.tmp' --exclude train.log gpu-fcdn56 | split -b 15M - "$out/gpu-fcdn56.tar.part-"
ls -la "$out"
