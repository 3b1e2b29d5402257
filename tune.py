#!/usr/bin/env python
"""Sweep ROAD's hyper-parameters on Ray Tune (Optuna + ASHA): ``python tune.py [options]``.

With no arguments: the MiniCity sweep of search_spaces/minicity.yaml on a local Ray instance
(about ten minutes on two CPU cores), even when a ``ray start`` cluster runs on the machine.
Inside ``ray job submit -- python tune.py ...`` it joins the cluster (RAY_ADDRESS) instead;
``--address`` chooses one explicitly. The machinery is road_ray/on_ray/tune.py (Ray) and
road_ray/sweeps/ (the search space, the sweep's record, the outcome printed here).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tune.py",
        description="Sweep ROAD's λ1 (road.lambda_dist), λ2 (road.lambda_spt), partition grid and teacher layer "
        "with Ray Tune + Optuna (ASHA early stopping), then print the table of trials, the best checkpoint and "
        "the command that evaluates it.",
        epilog="Search spaces: search_spaces/*.yaml (format: road_ray/sweeps/space.py). mIoU is the target-val "
        "mIoU (the oracle); source-val mIoU and target entropy are label-free proxies shown beside it.",
    )
    p.add_argument(
        "--space",
        help="search-space YAML file, or a shipped space's name (minicity, smoke, grid_ablation, "
        "gta5_deeplab_vgg16, ...); default: minicity (smoke with --smoke)",
    )
    p.add_argument("--num-samples", type=int, help="number of trials (overrides the space's num_samples)")
    p.add_argument(
        "--storage", help="folder or URI holding experiments (default: $ROAD_RAY_STORAGE or ~/road-ray-results)"
    )
    p.add_argument(
        "--name",
        help="experiment name (default: SPACE-DATE-TIME); with --resume: which one to resume "
        "(default: the latest of this space)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep: finished trials are kept, unfinished ones continue from their checkpoints",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the real path at toy size (search_spaces/smoke.yaml, "
        "or the given --space with the smoke sizes, at most 3 trials)",
    )
    p.add_argument(
        "--optuna-storage",
        metavar="SQLITE_FILE",
        help="also keep the Optuna study in this SQLite file (e.g. to inspect it with optuna-dashboard)",
    )
    p.add_argument(
        "--select",
        metavar="CRITERION",
        nargs="?",
        const="default",
        help="optimise this metric instead of the space's (Optuna's and ASHA's); without a value (or 'default'): the "
        "criterion with the smallest worst-case regret on MiniCity (road_ray/sweeps/metrics.py DEFAULT_SELECT, "
        "docs/results/minicity.md); or a label-free validator "
        "(val/im, val/bnm, val/snd, val/dev, val/entropy, val/mixval; docs/validators.md) or source_val_miou, so "
        "that the sweep chooses without target labels (add --set data.target_val=none to read none at all)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="the sweep's seed (Optuna's sampler), instead of the space's seed:; trials' run.seed is --set run.seed=N",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a config key for every trial, over the space's fixed: (repeatable), e.g. --set data.target_val=none",
    )
    p.add_argument(
        "--address",
        help="the Ray cluster to join: HOST:PORT, auto (the one `ray start` recorded on this machine) or local "
        "(an instance of its own); default: $RAY_ADDRESS (what `ray job submit` sets), else local",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        help="trials at a time (default: the space's, else GPUs // GPUs per trial, or 1 per ~4 CPU cores)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from road_ray.config import ConfigError
    from road_ray.sweeps.record import load_space_for_run
    from road_ray.sweeps.space import SpaceError

    try:
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise ValueError(f"--max-concurrent: expected >= 1, got {args.max_concurrent}")
        if not args.resume:  # a bad space fails in a second, before Ray is even imported
            load_space_for_run(args.space, args.smoke, args.num_samples, args.select, args.set, args.seed)
        from road_ray.on_ray.tune import run_sweep
        from road_ray.sweeps.outcome import print_outcome

        outcome = run_sweep(
            args.space,
            num_samples=args.num_samples,
            storage=args.storage,
            name=args.name,
            resume=args.resume,
            smoke=args.smoke,
            optuna_storage=args.optuna_storage,
            max_concurrent=args.max_concurrent,
            select=args.select,
            overrides=args.set,
            seed=args.seed,
            address=args.address,
        )
    except (SpaceError, ConfigError, ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"tune.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tune.py: interrupted; continue with: python tune.py --resume [--name NAME]", file=sys.stderr)
        return 130
    print_outcome(outcome)
    return 0 if outcome.best_trial is not None else 1


if __name__ == "__main__":
    sys.exit(main())
