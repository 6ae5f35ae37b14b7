#!/usr/bin/env bash
# The one GPU check of issue 14, for a session lent an NVIDIA GPU (the device tool runs a copy of
# the working tree on a bare machine: no Rust there). Two halves:
#
#   bash scripts/gpu-check.sh build     # here, on the CPU machine: CUDA-feature binaries and the
#                                       # corpus in one archive, gpu-check.tgz
#   bash scripts/gpu-check.sh run       # on the GPU machine (device `run`): prints results
#
# The device tool carries at most 64 MiB of ignored files: the stripped binaries and data/sotu,
# gzipped together, come to about 35 MB. `run` (carry ["gpu-check.tgz"]) unpacks them and runs
# stages ordered by value, each under its own time limit so that one slow stage cannot eat the
# whole lease: the CubeCL kernel tests on CUDA (forward and every gradient against the CPU
# kernels, causality, saved state; the same kernels under burn's fusion); the paper's S shape
# (12 layers, d_model 896, L 2048) for a few steps of each attention, in f32 and in bf16, and of
# the baseline without fusion, whose log lines give tokens/s; castle-bench
# tables 1 and 2 on CUDA; 60 steps of small.toml for each attention. nvidia-smi's memory use is
# sampled during each stage. Everything printed also lands in $OUT/gpu-check.log (when $OUT is
# set). Record what it prints in docs/benchmarks.md.
#
# The binaries are built against CUDA 13.0's API (CUDARC_CUDA_VERSION; the device machine's
# driver is 580, nvcc 13.0); cubecl compiles its kernels at run time with NVRTC, found below.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=gpu-bin

# `stage NAME SECONDS CMD...`: runs CMD under a time limit, printing its wall time and the peak
# GPU memory nvidia-smi saw meanwhile; a failure or timeout is reported and the script goes on.
# No stage runs past BUDGET seconds from the start of `run` (default 450, so that a device call
# of 600 s still returns everything): a stage's limit is cut to what is left, and once less than
# 15 s is left the remaining stages are skipped, each saying so.
stage() {
    local name=$1 limit=$2 left=$((${BUDGET:-450} - SECONDS))
    shift 2
    if [ "$left" -lt 15 ]; then
        echo "=== $name: skipped, the ${BUDGET:-450} s budget is spent"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s): $*"
    (while sleep 0.5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done) \
        >"/tmp/mem-$name.log" 2>/dev/null &
    local sampler=$! t0=$SECONDS rc=0
    timeout "$limit" "$@" || rc=$?
    kill "$sampler" 2>/dev/null || true
    echo "=== $name: rc $rc, $((SECONDS - t0)) s, peak GPU memory $(sort -n "/tmp/mem-$name.log" | tail -1) MiB"
}

# NVRTC (libnvrtc.so.13) and the CUDA headers, wherever this image keeps them.
find_cuda() {
    if ! ldconfig -p | grep -q libnvrtc; then
        local lib
        lib=$(find /usr/local /opt /usr/lib -name 'libnvrtc.so*' 2>/dev/null | sort | tail -1)
        [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    if [ -z "${CUDA_PATH:-}" ] && [ ! -f /usr/local/cuda/include/cuda_fp16.h ]; then
        local h
        h=$(find /usr/local /opt -name cuda_fp16.h 2>/dev/null | head -1)
        [ -n "$h" ] && export CUDA_PATH="$(dirname "$(dirname "$h")")"
    fi
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}"
}

case "${1:-}" in
build)
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/castle-target}" CARGO_INCREMENTAL=0
    export CUDARC_CUDA_VERSION=13000
    rm -rf "$bin" && mkdir -p "$bin"
    # castle-kernels' test binary (tests/kernels); the run stage picks its GPU modules by name.
    exe=$(cargo test --release -p castle-kernels --features cuda --test kernels --no-run --message-format=json \
        | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
    cp "$exe" "$bin/kernels"
    cargo build --release -p castle-train --features cuda --bin castle-train
    cp "$CARGO_TARGET_DIR/release/castle-train" "$bin/"
    cargo build --release -p castle-bench --features cuda --bin castle-bench
    cp "$CARGO_TARGET_DIR/release/castle-bench" "$bin/"
    strip "$bin"/*
    bash scripts/fetch_sotu.sh
    tar czf gpu-check.tgz "$bin" data/sotu
    du -sh "$bin" data/sotu gpu-check.tgz
    ;;
run)
    if [ -n "${OUT:-}" ] && [ -z "${TEED:-}" ]; then
        TEED=1 bash "$0" run 2>&1 | tee "$OUT/gpu-check.log"
        exit "${PIPESTATUS[0]}"
    fi
    [ -d "$bin" ] || tar xzf gpu-check.tgz
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    find_cuda
    backend="${BACKEND:-cuda}"
    if [ -z "${DRY:-}" ]; then
        for t in cube_kernels cube_castle fusion; do
            stage "test-$t" "${TEST_LIMIT:-150}" "$bin/kernels" "$t::" --test-threads 1
        done
    fi
    # The paper's S shape (docs/castle.md, section 6) at L = 2048, micro-batch 16: its memory estimate,
    # then a few steps of each attention (log_every 1: every step's tokens/s).
    train=("$bin/castle-train" --config configs/small.toml ${DRY:-} --set backend.kind=\"$backend\")
    s_shape=(--set model.layers=12 --set model.d_model=896 --set model.heads=14 --set model.head_dim=64
        --set model.max_seq_len=2048 --set train.seq_len=2048 --set train.batch_size=16
        --set train.tokens_per_step=32768 --set train.warmup_steps=2 --set train.log_every=1
        --set eval.every=1000)
    "$bin/castle-train" --config configs/small.toml --dry-run --set backend.kind=\"$backend\" \
        --set model.attention=\"castle\" "${s_shape[@]}" --set train.steps=4 || true
    stage s-baseline "${S_LIMIT:-90}" "${train[@]}" --set model.attention=\"baseline\" "${s_shape[@]}" \
        --set train.steps="${S_STEPS:-4}" --set run.dir=\"/tmp/runs/s-baseline\"
    stage s-castle "${S_LIMIT:-90}" "${train[@]}" --set model.attention=\"castle\" "${s_shape[@]}" \
        --set train.steps="${S_STEPS:-4}" --set run.dir=\"/tmp/runs/s-castle\"
    # The baseline without burn's fusion of elementwise ops (the runs above have it): its gain.
    stage s-baseline-bare "${S_LIMIT:-90}" "${train[@]}" --set model.attention=\"baseline\" \
        "${s_shape[@]}" --set backend.fusion=false --set train.steps="${S_STEPS:-4}" \
        --set run.dir=\"/tmp/runs/s-baseline-bare\"
    # The same in bf16 mixed precision: issue 14's throughput target is against the bf16 peak.
    for a in baseline castle; do
        stage "s-$a-bf16" "${S_LIMIT:-90}" "${train[@]}" --set model.attention=\"$a\" "${s_shape[@]}" \
            --set backend.dtype=\"bf16\" --set train.steps="${S_STEPS:-4}" \
            --set run.dir=\"/tmp/runs/s-$a-bf16\"
    done
    # castle-bench: attention alone, then the training step at issue 11's shapes.
    if [ -z "${DRY:-}" ]; then
        stage bench-attention "${BENCH_LIMIT:-90}" "$bin/castle-bench" --backends "$backend" \
            --tables 1 --lengths "${LENGTHS:-1024,2048,4096}" --blocks 64 --chunked-block 64 \
            --reps 2 --matmul-size "${MATMUL:-8192}"
        stage bench-train "${BENCH_LIMIT:-90}" "$bin/castle-bench" --backends "$backend" \
            --tables 2 --train-reps 3 --matmul-size "${MATMUL:-8192}"
    fi
    # The SOTU corpus (data/sotu, carried) and small.toml's tokenizer: a tiny training run.
    for a in baseline castle; do
        stage "small-$a" "${SMALL_LIMIT:-60}" "${train[@]}" --set model.attention=\"$a\" \
            --set train.steps=60 --set train.warmup_steps=10 --set run.dir=\"/tmp/runs/small-$a\"
    done
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
