#!/usr/bin/env bash
# Regenerates docs/results/minicity/ (docs/results/minicity.md): the study at the short-run
# recipe (36 runs, ~2 h on two CPU cores) topped up with seeds 3 and 4 of its points whose
# differences are small (20 runs, ~1.5 h), its controls run (15), the default Optuna sweep (the README's main command),
# the same sweep with another seed choosing without target labels (--select, no target-val
# split; its trials scored on target val afterwards), the default sweep's first point run three
# more times (its run-to-run spread), their reports, and the selection measurement. Run from the repository root with the README's virtualenv active.
# MiniCity and the small backbone's pretraining are cached in ROAD_RAY_HOME after their first use
# (add ~15 minutes the first time).
#   bash docs/results/minicity_study.sh [STORAGE]
set -euo pipefail
storage="${1:-${ROAD_RAY_STORAGE:-$HOME/road-ray-results}}"
stamp="$(date +%Y%m%d-%H%M%S)"
out="docs/results/minicity"
study="minicity-study-$stamp" more="minicity-study-seeds34-$stamp" controls="minicity-controls-$stamp"
optuna="minicity-optuna-$stamp" labelfree="minicity-labelfree-$stamp" first="minicity-first-point-$stamp"

python tune.py --space minicity_study --storage "$storage" --name "$study"
python tune.py --space minicity_study_seeds34 --storage "$storage" --name "$more"
python tune.py --space minicity_controls --storage "$storage" --name "$controls"
python tune.py --storage "$storage" --name "$optuna"
python tune.py --storage "$storage" --name "$labelfree" --seed 1 --set run.seed=1 --select --set data.target_val=none
python tune.py --space minicity_first_point --storage "$storage" --name "$first"

rm -rf "$out/study" "$out/controls" "$out/optuna" "$out/labelfree" "$out/first-point" "$out/selection"
road-ray report --experiment "$storage/$study" --experiment "$storage/$more" --out "$out/study"
road-ray report --experiment "$storage/$controls" --out "$out/controls"
road-ray report --experiment "$storage/$optuna" --out "$out/optuna"
road-ray report --experiment "$storage/$labelfree" --out "$out/labelfree"
road-ray report --experiment "$storage/$first" --out "$out/first-point"
# The label-free sweep's trials on the 50 target-val images the default sweep evaluates on.
road-ray eval --experiment "$storage/$labelfree" --each-trial --dataset minicity --max-images 50 \
  --json "$out/labelfree/each_trial.json" > "$out/labelfree/each_trial.txt"
road-ray selection --experiment "$storage/$study" --experiment "$storage/$more" --experiment "$storage/$controls" --experiment "$storage/$optuna" \
  --scored-by-eval "$out/labelfree/each_trial.json" --out "$out/selection"
echo "wrote $out/{study,controls,optuna,labelfree,first-point,selection}/"
