#!/usr/bin/env bash
# The CPU ladder (configs/sweeps/cpu-ladder.toml): 3 sizes x 3 attention kinds x 2 seeds on the
# default corpus, 27 minutes on 2 cores with builds beside it. Stop it any time; running it again skips finished
# cells and resumes the unfinished one. Results: runs/sweep-cpu/results.md, curves.svg, scaling.svg.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo run --release --bin castle-sweep -- --sweep configs/sweeps/cpu-ladder.toml "$@"
