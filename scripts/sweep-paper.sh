#!/usr/bin/env bash
# The paper's ladder (configs/sweeps/paper.toml): S, M, L, XL x 3 attention kinds, 50B tokens each,
# on a CUDA machine with FineWeb-Edu under data/fineweb-edu (see crates/castle-data/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo run --release --features cuda --bin castle-sweep -- --sweep configs/sweeps/paper.toml "$@"
