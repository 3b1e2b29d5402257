"""The ``road-ray`` command line (docs/formats.md — a contract other tools rely on).

Subcommands import their machinery lazily, so ``road-ray --help`` is instant and commands
that need no Ray never import it. Every bad input exits non-zero with a one-line reason.
"""

from __future__ import annotations

import argparse
import sys

from road_ray import jsonio
from road_ray.config import ConfigError
from road_ray.failures import RunStalled

EPILOG = "Docs: README.md and docs/. Every command exits non-zero with a one-line reason on bad input."


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="raw dataset (or MiniCity) -> Parquet shards + manifest.json",
        description="Convert a dataset in its original layout into Parquet shards (one row per image, "
        "labels as trainIds) plus manifest.json (row counts, class-pixel histogram, skipped files).",
    )
    p.add_argument("dataset", help="cityscapes | gta5 | synthia | minicity")
    p.add_argument("--root", help="the dataset's root folder in its original layout (real datasets)")
    p.add_argument("--out", required=True, help="output folder or URI (s3://, gs://, file://)")
    p.add_argument("--size", default="default", help="MiniCity size: small | default")
    p.add_argument("--seed", type=int, default=0, help="MiniCity seed")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    p.add_argument("--image-format", default="png", choices=["png", "jpeg"], help="image encoding in the shards")
    p.add_argument("--jpeg-quality", type=int, default=95, help="with --image-format jpeg (default 95)")
    p.add_argument(
        "--resize",
        type=float,
        default=1.0,
        metavar="SCALE",
        help="store the images of --resize-splits SCALE times their size (area; labels nearest), e.g. 0.5 for "
        "a training base scale of 0.5: recorded in manifest.json (stored_scale); crops and boxes stay those of the "
        "original image (default 1: full size)",
    )
    p.add_argument(
        "--resize-splits",
        default="train",
        help="comma-separated splits that --resize applies to (default train: validation stays full size)",
    )
    p.add_argument("--shard-mb", type=int, default=256, help="target size of one Parquet part in MB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared output")
    p.set_defaults(run=cmd_prepare)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="one ROAD training run on Ray Train",
        description="Train one model with the ROAD objective (paper Eq. 5) on Ray Train. Prints, as the last "
        "line of stdout, a JSON object with iter, miou and checkpoint.",
    )
    p.add_argument("--config", help="YAML config file (nested keys as in road_ray/config.py)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set road.lambda_dist=0.1 (repeatable)",
    )
    p.add_argument("--smoke", action="store_true", help="the real path at toy size (MiniCity small, a few iterations)")
    p.add_argument("--storage", help="where runs are kept (folder or URI); default ~/road-ray-results")
    p.add_argument("--name", help="run name; a run restarted with the same storage and name resumes")
    p.add_argument(
        "--address",
        help="the Ray cluster to join: HOST:PORT, auto (the one `ray start` recorded on this machine) or local "
        "(an instance of its own); default: $RAY_ADDRESS, else local",
    )
    p.set_defaults(run=cmd_train)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: per-class IoU and mIoU",
        description="Evaluate a checkpoint on a split: one confusion matrix over the whole split, IoU per class, "
        "mIoU over the label space (19; 16 and 13 for SYNTHIA).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory written by road-ray train")
    src.add_argument("--experiment", help="a sweep experiment directory (with --best)")
    p.add_argument(
        "--best",
        action="store_true",
        help="with --experiment: the final checkpoint of the trial the sweep selects (see --by)",
    )
    p.add_argument(
        "--each-trial",
        action="store_true",
        help="with --experiment: every trial's final checkpoint, one line each, beside the trial the sweep (or --by) "
        "selects: how a label-free sweep chose, scored where labels exist (give --shards or --dataset when the "
        "trials ran with data.target_val=none)",
    )
    p.add_argument(
        "--by",
        metavar="CRITERION",
        help="with --best or --each-trial: select by this reported metric's final value instead of the sweep's own: miou (the "
        "oracle), source_val_miou, a label-free validator (val/im, val/bnm, val/snd, val/dev, val/entropy, "
        "val/mixval; docs/validators.md), or miou-over-time (the best target-val mIoU of any evaluation: "
        "test-set selection)",
    )
    data = p.add_mutually_exclusive_group()
    data.add_argument("--shards", help="a shard folder (one split) to evaluate on")
    data.add_argument("--dataset", help="cityscapes | gta5 | synthia | minicity (raw layout under --root)")
    p.add_argument("--root", help="dataset root for --dataset")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument(
        "--save-predictions", metavar="DIR", help="write labelIds PNGs here (only them: the official evaluator's input)"
    )
    p.add_argument("--save-overlays", metavar="DIR", help="write colour overlays here (outside --save-predictions)")
    p.add_argument("--json", metavar="FILE", help="write the scores as JSON")
    p.add_argument("--mode", choices=["whole", "slide"], help="inference mode (default: the checkpoint's config)")
    p.add_argument("--scale", type=float, help="whole-image inference scale (default: the checkpoint's config)")
    p.add_argument("--max-images", type=int, default=0, help="evaluate only the first N images (0 = all)")
    p.set_defaults(run=cmd_eval)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="sweep table + plots",
        description="Turn a sweep experiment into a Markdown table and PNG plots: for an Optuna sweep, mIoU vs "
        "each parameter, parameter importance, the paper's point vs the best, what the label-free proxies would "
        "select; for a study (points: in the space), the paper's per-class table and bar charts over seeds.",
    )
    p.add_argument(
        "--experiment",
        action="append",
        required=True,
        help="the sweep experiment directory; repeated: a study and experiments that add seeds to its points, "
        "reported as one study",
    )
    p.add_argument("--out", help="output folder (default: the first EXPERIMENT/report)")
    p.set_defaults(run=cmd_report)


def _add_selection(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "selection",
        help="how well each label-free criterion selects, over several experiments",
        description="Measure every label-free criterion (source-val mIoU, the val/* validators; docs/validators.md) "
        "against the oracle target-val mIoU over the trials of several experiments (a study, default sweeps of "
        "different seeds): Spearman's rank correlation, the regret of its pick among all trials and among the ROAD "
        "trials of each experiment. Writes selection.md, selection.json and a scatter plot per criterion.",
    )
    p.add_argument("--experiment", action="append", default=[], help="an experiment directory (repeat for more)")
    p.add_argument(
        "--scored-by-eval",
        action="append",
        default=[],
        metavar="FILE",
        help="the JSON of road-ray eval --experiment DIR --each-trial --json FILE: a sweep that ran without target "
        "labels (tune.py --select), its trials' mIoU scored after the fact (repeatable)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=cmd_selection)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="speed ratios measured side by side in one run",
        description="Speed as ratios of variants measured side by side in one run (medians of interleaved "
        "rounds): step = ROAD step vs a plain supervised step, vs the same step inside Ray Train, the share "
        "of each ROAD term, and the step's FLOP/s against the machine's measured peak; data = Ray Data crops/s "
        "vs a PyTorch DataLoader, vs the step's consumption, PNG vs JPEG shards; eval = whole-image vs "
        "sliding-window evaluation images/s; trial = where one real training run's time goes (train_share); "
        "gpu = the one GPU check (needs CUDA; one JSON). A progress line per phase goes to stderr, a table to "
        "stdout.",
    )
    p.add_argument("what", choices=["step", "data", "eval", "trial", "gpu"])
    p.add_argument("--json", metavar="FILE", help="write the figures, the settings and the machine as JSON")
    options: list[str] = []  # every bench option's name: what cmd_bench hands run_bench

    def option(*flags: str, **kwargs) -> None:
        options.append(p.add_argument(*flags, **kwargs).dest)

    option("--network", help="ARCH-BACKBONE, e.g. deeplabv2-small (default), deeplabv2-resnet101, pspnet-resnet101")
    option("--crop", type=int, help="crop side in pixels (default 161; eval: the sliding window)")
    option("--batch", type=int, help="crops per domain per step (default 5, i.e. 5 source + 5 target)")
    option(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="default auto, as run.precision: bf16 on GPUs and on CPUs with native bf16, else fp32",
    )
    option("--device", help="auto (default: cuda when available), cpu, cuda, cuda:N")
    option("--teacher-layer", help="step: the distilled tap (default: the backbone's last stage, e.g. layer4)")
    option("--repeats", type=int, help="measured rounds (medians are taken over them)")
    option("--warmup", type=int, help="untimed calls of each variant first")
    option("--smoke", action="store_true", default=None, help="toy sizes (MiniCity small, tiny crops, 1-2 rounds)")
    option("--no-ray", dest="ray", action="store_false", default=None, help="step: skip the Ray Train variant")
    option("--no-peak", dest="peak", action="store_false", default=None, help="step: skip the measured peak")
    option("--threads", type=int, help="torch threads of the measured process (step: and of the Ray worker)")
    option("--peak-tflops", type=float, help="step, gpu: the device's peak TFLOP/s for MFU (default: a table by GPU)")
    option("--workers", type=int, help="data: CPU workers of Ray Data and of the DataLoader (default: all cores)")
    option("--steps", type=int, help="data: timed batches per measurement")
    option(
        "--images", type=int, help="eval: images of target_val per pass (default: all); data --resolution: images made"
    )
    option(
        "--resolution",
        choices=["gta5", "cityscapes"],
        help="data: the full-resolution bench (1914x1052 / 2048x1024 images made here; PNG/JPEG, full size/base scale)",
    )
    option("--base-scale", type=float, help="data --resolution: the training base scale (default 0.5)")
    option(
        "--gpu-steps-per-s",
        type=float,
        help="data --resolution: the GPU's ROAD steps/s (2 x batch crops each) for the cores-per-GPU line (default 50)",
    )
    option("--iters", type=int, help="trial: training iterations of the run (default 480)")
    option("--eval-every", type=int, help="trial: iterations between evaluations (default 160)")
    option("--allow-cpu", action="store_true", default=None, help="gpu: with --smoke, the CPU test path")
    p.set_defaults(run=cmd_bench, bench_options=options)


def _add_import_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-weights",
        help="the field's DeepLab-v2 ResNet weights -> a file model.pretrained loads",
        description="Convert the DeepLab-v2 init file (DeepLab_resnet_pretrained_init, keys Scale.*) or an "
        "AdaptSegNet / ADVENT DeepLab-v2 checkpoint (single- or multi-level) into a road-ray weights file for the "
        "Caffe-style DeepLab-v2 ResNet (model.resnet_style=caffe). Layouts: road_ray/models/import_weights.py.",
    )
    p.add_argument("file", help="the .pth file in the field's layout")
    p.add_argument("--out", required=True, help="the road-ray weights file to write")
    p.add_argument(
        "--from",
        dest="origin",
        default="auto",
        choices=["auto", "deeplabv2-init", "adaptsegnet", "advent"],
        help="which project wrote the file (needed where layouts coincide; adaptsegnet sums two ASPP branches)",
    )
    p.add_argument("--num-classes", type=int, default=19, help="keep the classifier if it has this many classes")
    p.set_defaults(run=cmd_import_weights)


def cmd_import_weights(args: argparse.Namespace) -> None:
    from road_ray.models.import_weights import import_from_cli

    import_from_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="road-ray",
        description="ROAD (Reality Oriented ADaptation) for synthetic-to-real semantic segmentation, on Ray.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{prepare,train,eval,report,selection,bench,import-weights}"
    )
    _add_prepare(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_report(sub)
    _add_selection(sub)
    _add_bench(sub)
    _add_import_weights(sub)
    return parser


def cmd_prepare(args: argparse.Namespace) -> None:
    if args.dataset == "minicity":
        from road_ray.data.minicity import write_minicity

        manifest = write_minicity(
            args.out, size=args.size, seed=args.seed, num_workers=args.workers, overwrite=args.overwrite
        )
    else:
        from road_ray.data.prepare import DATASETS, prepare_dataset

        if args.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {args.dataset!r}; expected one of {', '.join(DATASETS)}, minicity")
        if not args.root:
            raise ValueError(f"road-ray prepare {args.dataset}: --root DIR is required")
        manifest = prepare_dataset(
            args.dataset,
            args.root,
            args.out,
            num_workers=args.workers,
            shard_bytes=args.shard_mb * 1024 * 1024,
            image_format=args.image_format,
            jpeg_quality=args.jpeg_quality,
            resize=args.resize,
            resize_splits=tuple(x.strip() for x in args.resize_splits.split(",") if x.strip()),
            overwrite=args.overwrite,
        )
    splits = {k: v["rows"] for k, v in manifest["splits"].items()}
    print(
        f"wrote {args.out}: rows per split {splits}; skipped {len(manifest.get('skipped', []))} inputs (see manifest.json)"
    )


def cmd_train(args: argparse.Namespace) -> None:
    from road_ray.on_ray.train import train_from_cli

    summary = train_from_cli(
        config_path=args.config,
        overrides=args.overrides,
        smoke=args.smoke,
        storage=args.storage,
        name=args.name,
        address=args.address,
    )
    print(jsonio.dumps(summary))


def cmd_eval(args: argparse.Namespace) -> None:
    from road_ray.engine.evaluate_cli import eval_from_cli

    eval_from_cli(args)


def cmd_report(args: argparse.Namespace) -> None:
    from road_ray.sweeps.report import write_report

    write_report(args.experiment, args.out)


def cmd_selection(args: argparse.Namespace) -> None:
    from road_ray.sweeps.selection_report import write_selection_report

    write_selection_report(args.experiment, args.out, scored_by_eval=args.scored_by_eval)


def cmd_bench(args: argparse.Namespace) -> None:
    from road_ray.bench import run_bench

    result = run_bench(args.what, args.json, **{name: getattr(args, name) for name in args.bench_options})
    if result.get("ok") is False:  # bench gpu: a part failed (its error is in the JSON)
        print(f"road-ray bench {args.what}: failed parts: {', '.join(result['failed_parts'])}", file=sys.stderr)
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"road-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunStalled as e:
        print(f"road-ray {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"road-ray {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
