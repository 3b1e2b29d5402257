#!/usr/bin/env bash
# Regenerates docs/results/minicity/ (issue #8): the paper's ablations on MiniCity (30 runs,
# 72 minutes measured on two CPU cores), then the default Optuna sweep of the same run size (the
# README's main command, ~10 minutes), then their reports. Run from the repository root with
# the README's virtualenv active. MiniCity and the small backbone's pretraining are cached in
# ROAD_RAY_HOME after their first use (add ~15 minutes the first time).
#   bash docs/results/minicity_study.sh [STORAGE]
set -euo pipefail
storage="${1:-${ROAD_RAY_STORAGE:-$HOME/road-ray-results}}"
stamp="$(date +%Y%m%d-%H%M%S)"
out="docs/results/minicity"

python tune.py --space minicity_study --storage "$storage" --name "minicity-study-$stamp"
python tune.py --space minicity --storage "$storage" --name "minicity-optuna-$stamp"

rm -rf "$out/study" "$out/optuna"
road-ray report --experiment "$storage/minicity-study-$stamp" --out "$out/study"
road-ray report --experiment "$storage/minicity-optuna-$stamp" --out "$out/optuna"
echo "wrote $out/study/report.md and $out/optuna/report.md"
