#!/usr/bin/env bash
# Install the peer libraries of benchmarks/bench_peers.py into the project's environment, keeping
# its CPU build of torch: --no-deps, because backpack-for-pytorch (required by curvlinops) pulls
# torchvision and with it a multi-GB CUDA torch. Only what curvlinops' GGN operator imports is added.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vpy="$(bash "$root/scripts/setup_env.sh")"
"$vpy" -m pip install -q --no-deps "curvlinops-for-pytorch>=3" "backpack-for-pytorch>=1.6" einops einconv linear_operator opt-einsum
"$vpy" -c "from curvlinops import GGNLinearOperator; print('curvlinops', __import__('curvlinops').__name__, 'ready')"
