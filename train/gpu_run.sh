#!/usr/bin/env bash
# One lent-GPU session of a run, on the device machine (train/README.md, "On a lent GPU").
#   [RUN=fcdn103] bash train/gpu_run.sh MINUTES [train.train options; a --set given here wins over the GPU settings below]
# It resumes train/runs/$RUN (default fcdn103; gpu-fcdn56 ended at epoch 171), which must travel with the tree
# (commit it first: an untracked run folder left on the machine by an earlier call is wiped by the next copy).
# Only START_FROM=<run> starts it anew from that run's last checkpoint: a missing checkpoint never silently
# restarts from an older one.
# Everything worth keeping lands in $OUT: the log, and the run folder as a tar split under the 16 MiB-per-file
# limit of what comes back, without a slim run's last.full.pt (112 MB for FC-DenseNet103; it resumes exactly
# only where it was written). A hard timeout leaves time for the packing even if an epoch overruns.
# The training steps are compiled (inductor: 475 samples/s against 333 eager on the H200, 2026-11-27); COMPILE=
# (empty) trains eager, for a machine whose compiler fails. PROFILE=1 first times where an epoch's time goes
# (benchmarks/train_throughput.py, with the same settings), inside the same budget.
# CALL_SECONDS (default 590) caps the whole script, so that it ends inside the device tool's 10-minute call even
# when the profile or an epoch runs long: training gets what is left of it after the packing's margin.
set -u
call_seconds=${CALL_SECONDS:-590}
minutes=${1:?minutes}
shift
run_name=${RUN:-fcdn103}
run=train/runs/$run_name
out=${OUT:?OUT must name the folder that comes back}
mkdir -p "$run"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/train.log"
if [ -n "${START_FROM:-}" ]; then
    [ -f "$run/last.pt" ] && { echo "$run already holds a run; unset START_FROM to resume it" | tee -a "$out/train.log"; exit 2; }
    # config.json too: it is what the new run resumes with on the CPU, and what it goes back with (below).
    cp "train/runs/$START_FROM/last.pt" "train/runs/$START_FROM/metrics.jsonl" "train/runs/$START_FROM/sessions.jsonl" \
        "train/runs/$START_FROM/config.json" "$run/"
elif [ ! -f "$run/last.pt" ]; then
    echo "$run/last.pt is missing: commit the run folder so it travels, or set START_FROM" | tee -a "$out/train.log"
    exit 2
fi
# The run's saved config holds its CPU-session settings; these are its GPU ones (one H200, 14 data workers).
# The epoch is 20 of the CPU's so that validation and the worker start-up stay a small share of the time.
gpu_settings=(--set batch_size=32 --set num_workers=14 --set samples_per_epoch=10000 --set lr_decay=0.93)
# Compiling fuses the dense blocks' memory-bound passes (BatchNorm, ReLU, dropout, concatenation); it costs
# 25 to 90 s on the first epoch (less when the compile cache is warm). Validation and the saved weights stay eager.
compile_backend=${COMPILE-inductor}
[ -n "$compile_backend" ] && gpu_settings+=(--set "compile=\"$compile_backend\"")
if [ -n "${PROFILE:-}" ]; then
    # About two minutes: the loaders alone, the steps alone (with the operators that take their time), validation.
    PYTHONUNBUFFERED=1 PYTHONPATH=. timeout 240 python3 benchmarks/train_throughput.py --run-dir "$run" \
        --data-root data_cache --device "${DEVICE:-cuda}" "${gpu_settings[@]}" --kernels 15 2>&1 | tee -a "$out/train.log"
fi
# Packing and the return transfer need about 40 s; an epoch that overruns --max-minutes gets up to 75 s more.
left=$((call_seconds - SECONDS - 40))
limit=$(python3 -c "print(int(min($minutes * 60 + 75, $left)))")
minutes=$(python3 -c "print(round(min($minutes, ($left - 75) / 60), 2))")
echo "training for $minutes minutes, hard limit ${limit} s" | tee -a "$out/train.log"
# train.train writes the --set options into the run's config.json, which the next CPU session would resume
# with (14 workers, compiled steps on 2 cores): the run goes back with its CPU config, and sessions.jsonl
# keeps this session's settings.
cpu_config=$(mktemp)
[ -f "$run/config.json" ] && cp "$run/config.json" "$cpu_config"
PYTHONUNBUFFERED=1 PYTHONPATH=. timeout "$limit" python3 -m train.train --run-dir "$run" --resume \
    --data-root data_cache --device "${DEVICE:-cuda}" --max-minutes "$minutes" --epochs 100000 "${gpu_settings[@]}" "$@" 2>&1 | tee -a "$out/train.log"
[ -s "$cpu_config" ] && cp "$cpu_config" "$run/config.json"
rm -f "$cpu_config"
last_grid=$(ls "$run/grids" 2>/dev/null | tail -1)
[ -n "$last_grid" ] && cp "$run/grids/$last_grid" "$out/"
tar -cf - -C train/runs --exclude grids --exclude '*.tmp' --exclude train.log --exclude last.full.pt "$run_name" | split -b 15M - "$out/$run_name.tar.part-"
ls -la "$out"
