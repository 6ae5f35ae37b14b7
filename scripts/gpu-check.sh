#!/usr/bin/env bash
# The one GPU check of issue 14, for a session lent an NVIDIA GPU (the device tool runs a copy of
# the working tree on a bare machine: no Rust there). Two halves:
#
#   bash scripts/gpu-check.sh build     # here, on the CPU machine: CUDA-feature binaries and the
#                                       # corpus in one archive, gpu-check.tgz
#   bash scripts/gpu-check.sh run       # on the GPU machine (device `run`): prints results
#
# The device tool carries at most 64 MiB of ignored files: the stripped binaries are about 77 MB
# and data/sotu 11 MB, gzipped together about 26 MB. `run` (carry ["gpu-check.tgz"]) unpacks
# them, then executes the CubeCL kernel tests on CUDA (forward and
# every gradient against the CPU kernels, causality, saved state), then 60 steps of small.toml for
# each attention, then the paper's S shape (12 layers, d_model 896, L 2048) for 8 steps of each,
# whose log lines give tokens/s; nvidia-smi's memory use is sampled alongside. Record what it
# prints in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=gpu-bin

case "${1:-}" in
build)
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/castle-target}" CARGO_INCREMENTAL=0
    rm -rf "$bin" && mkdir -p "$bin"
    for t in cube_kernels cube_castle; do
        exe=$(cargo test --release -p castle-model --features cuda --test "$t" --no-run --message-format=json \
            | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
        cp "$exe" "$bin/$t"
    done
    cargo build --release -p castle-train --features cuda --bin castle-train
    cp "$CARGO_TARGET_DIR/release/castle-train" "$bin/"
    strip "$bin"/*
    bash scripts/fetch_sotu.sh
    tar czf gpu-check.tgz "$bin" data/sotu
    du -sh "$bin" data/sotu gpu-check.tgz
    ;;
run)
    [ -d "$bin" ] || tar xzf gpu-check.tgz
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    (while sleep 1; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done) > /tmp/mem.log &
    sampler=$!
    for t in cube_kernels cube_castle; do "$bin/$t" --test-threads 1; done
    # The SOTU corpus (data/sotu, carried) and small.toml's tokenizer; BACKEND=flex with
    # DRY=--dry-run checks these commands on the CPU machine.
    backend="${BACKEND:-cuda}"
    for a in baseline castle; do
        "$bin/castle-train" --config configs/small.toml ${DRY:-} --set backend.kind=\"$backend\" \
            --set model.attention=\"$a\" --set train.steps=60 --set train.warmup_steps=10 \
            --set run.dir=\"/tmp/runs/small-$a\"
    done
    # The paper's S shape (spec section 6) at L = 2048, micro-batch 16, 8 steps.
    for a in baseline castle; do
        "$bin/castle-train" --config configs/small.toml ${DRY:-} --set backend.kind=\"$backend\" \
            --set model.attention=\"$a\" --set model.layers=12 --set model.d_model=896 \
            --set model.heads=14 --set model.head_dim=64 --set model.max_seq_len=2048 \
            --set train.seq_len=2048 --set train.batch_size=16 --set train.tokens_per_step=32768 \
            --set train.steps=8 --set train.warmup_steps=2 --set train.log_every=1 \
            --set eval.every=1000 --set run.dir=\"/tmp/runs/s-$a\"
    done
    kill "$sampler"
    echo "peak GPU memory used (MiB): $(sort -n /tmp/mem.log | tail -1)"
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
