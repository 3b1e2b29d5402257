"""A study (named fixed points × seeds, see :mod:`road_ray.sweeps.space`) in the paper's form.

- ``table`` studies (paper Table 1): per-class IoU and mIoU, mean ± std over seeds, one row
  per point, and the share of the baseline -> upper-bound gap each point closes;
- ``bars`` studies (paper Fig. 4, Fig. 6): mean mIoU per point with ± std error bars and a dot
  per seed, the baseline and the upper bound drawn as lines.

Every number is a trial's *final* evaluation (its last report with ``miou``, at
``optim.max_iters``), never its best over time: picking the best evaluation would select on
the target labels. The study's raw numbers go to ``study.json``. No Ray here.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from road_ray import jsonio
from road_ray.sweeps.experiment import ExperimentError  # noqa: E402
from road_ray.sweeps.metrics import LABEL_FREE_PROXIES  # noqa: E402
from road_ray.sweeps.results import Experiment, display_path, number  # noqa: E402
from road_ray.sweeps.stats import difference_ci  # noqa: E402
from road_ray.sweeps.trial import POINT_KEY  # noqa: E402

IOU_PREFIX = "iou/"
# Short column titles for the 19 Cityscapes classes (the paper's Table 1 abbreviates them too).
SHORT = {
    "road": "road",
    "sidewalk": "sidew.",
    "building": "build.",
    "wall": "wall",
    "fence": "fence",
    "pole": "pole",
    "traffic light": "light",
    "traffic sign": "sign",
    "vegetation": "veget.",
    "terrain": "terr.",
    "sky": "sky",
    "person": "person",
    "rider": "rider",
    "car": "car",
    "truck": "truck",
    "bus": "bus",
    "train": "train",
    "motorcycle": "motor.",
    "bicycle": "bike",
}


def is_study(exp: Experiment) -> bool:
    return bool((exp.record.get("space") or {}).get("points"))


def study_results(exp: Experiment) -> dict[str, Any]:
    """Per point: each seed's final mIoU, proxies and per-class IoU, and their mean ± std;
    the gap shares; the studies as declared. What ``study.json`` holds."""
    space = exp.record.get("space") or {}
    points: dict[str, dict[str, Any]] = space.get("points") or {}
    baseline, upper = space.get("baseline"), space.get("upper_bound")
    max_iters = (exp.record.get("base_config") or {}).get("optim", {}).get("max_iters")
    out_points: dict[str, Any] = {}
    classes: list[str] = []
    for name, overrides in points.items():
        runs = []
        for t in exp.trials:
            if t.params.get(POINT_KEY) != name:
                continue
            row = t.last_evaluation()
            seed = t.params.get("run.seed")
            if row is None:
                runs.append({"trial": t.trial_id, "seed": seed, "state": t.state, "iter": t.iter})
                continue
            iou = {k[len(IOU_PREFIX) :]: number(v) for k, v in row.items() if k.startswith(IOU_PREFIX)}
            classes = classes or list(iou)
            runs.append(
                {
                    "trial": t.trial_id,
                    "seed": seed,
                    "state": t.state,
                    "iter": row.get("iter"),
                    "miou": number(row.get("miou")),
                    **{proxy: number(row.get(proxy)) for proxy in LABEL_FREE_PROXIES},
                    "iou": iou,
                }
            )
        done = [r for r in runs if r.get("miou") is not None and (max_iters is None or r.get("iter") == max_iters)]
        shown = {k: display_path(v) if isinstance(v, str) and "/" in v else v for k, v in overrides.items()}
        entry: dict[str, Any] = {"overrides": shown, "runs": sorted(runs, key=lambda r: str(r["seed"])), "n": len(done)}
        entry["miou"] = mean_std([r["miou"] for r in done])
        for proxy in LABEL_FREE_PROXIES:
            entry[proxy] = mean_std([r[proxy] for r in done])
        entry["iou"] = {c: mean_std([r["iou"].get(c) for r in done]) for c in classes}
        out_points[name] = entry
    result = {
        "experiment": exp.name,
        "space_file": display_path(exp.record.get("space_file") or ""),
        "baseline": baseline,
        "upper_bound": upper,
        "classes": classes,
        "points": out_points,
        "studies": space.get("studies") or {},
        "settings": settings_summary(exp),
        "parts": exp.record.get("parts"),
    }
    result["gap_closed"] = {name: gap_closed(result, name) for name in points}
    result["vs_baseline"] = {name: vs_baseline(out_points, baseline, name) for name in points}
    return result


def merge_studies(parts: list[Experiment]) -> Experiment:
    """One study from ``parts[0]`` and experiments that add seeds to some of its points.

    A study topped up later (e.g. two more seeds where its differences are small) is read as
    one: every part must be a study with the same base config, each of its points must be one of
    the first part's with the same overrides, and no (point, seed) may run twice. The merged
    record keeps the first part's space (its studies, baseline, upper bound) and lists the parts;
    its wall time is the sum of theirs.
    """
    main = parts[0]
    if not all(is_study(p) for p in parts):
        names = ", ".join(p.name for p in parts if not is_study(p))
        raise ExperimentError(f"{names}: not a study (no points: in its space); only studies can be read together")
    main_points = main.record["space"]["points"]
    seen = {(t.params.get(POINT_KEY), t.params.get("run.seed")): main.name for t in main.trials}
    for part in parts[1:]:
        if part.record.get("base_config") != main.record.get("base_config"):
            raise ExperimentError(f"{part.name}: its base config differs from {main.name}'s; not the same study")
        for name, overrides in part.record["space"]["points"].items():
            if main_points.get(name) != overrides:
                raise ExperimentError(
                    f"{part.name}: point {name!r} is {overrides}, but in {main.name} it is {main_points.get(name)}"
                )
        for t in part.trials:
            key = (t.params.get(POINT_KEY), t.params.get("run.seed"))
            if key in seen:
                raise ExperimentError(f"{part.name}: point {key[0]!r} seed {key[1]} already ran in {seen[key]}")
            seen[key] = part.name
    record = copy.deepcopy(main.record)
    seeds = sorted({t.params.get("run.seed") for p in parts for t in p.trials}, key=str)
    record["space"].setdefault("grid", {})["run.seed"] = seeds
    record["parts"] = [
        {
            "experiment": p.name,
            "runs": len(p.trials),
            "wall_time_s": wall_time(p),
            "runs_time_s": runs_time(p),
            "commit": (p.record.get("machine") or {}).get("commit"),
            "created": p.record.get("created"),
        }
        for p in parts
    ]
    trials = [t for p in parts for t in p.trials]
    return Experiment(main.path, trials, main.metric, main.mode, list(main.searched_keys), record, main.uri)


def vs_baseline(points: dict[str, Any], baseline: str | None, name: str) -> dict[str, Any] | None:
    """The point's final mIoU minus the baseline's, mean over seeds with a 95% interval (Welch)."""
    if baseline is None or baseline not in points or name == baseline:
        return None
    finals = {n: [r["miou"] for r in points[n]["runs"] if r.get("miou") is not None] for n in (name, baseline)}
    return difference_ci(finals[name], finals[baseline])


def gap_closed(result: dict[str, Any], name: str) -> float | None:
    """(mIoU(point) - mIoU(baseline)) / (mIoU(upper bound) - mIoU(baseline)), on the seed means."""
    pts = result["points"]
    b, u = result.get("baseline"), result.get("upper_bound")
    if b is None or u is None:
        return None
    vb, vu, v = pts[b]["miou"]["mean"], pts[u]["miou"]["mean"], pts[name]["miou"]["mean"]
    if vb is None or vu is None or v is None or vu - vb <= 0:
        return None
    return (v - vb) / (vu - vb)


def settings_summary(exp: Experiment) -> dict[str, Any]:
    base = exp.record.get("base_config") or {}
    model, data, road, optim = (base.get(k, {}) for k in ("model", "data", "road", "optim"))
    return {
        "network": f"{model.get('arch')}-{model.get('backbone')}",
        "teacher_layer": model.get("teacher_layer"),
        "iterations": optim.get("max_iters"),
        "crop": data.get("crop_size"),
        "batch": f"{data.get('batch_source')} + {data.get('batch_target')}",
        "lambda_dist": road.get("lambda_dist"),
        "lambda_spt": road.get("lambda_spt"),
        "grid": road.get("grid"),
        "max_val_images": data.get("max_val_images"),
        "machine": exp.record.get("machine"),
        "wall_time_s": wall_time(exp),
        "runs_time_s": runs_time(exp),
    }


def wall_time(exp: Experiment) -> float | None:
    """From the sweep's creation to the last report of any trial (of a merged study: the sum of its parts')."""
    if exp.record.get("parts"):
        times = [p.get("wall_time_s") for p in exp.record["parts"]]
        return None if None in times else float(sum(times))
    start = exp.record.get("created_unix")
    if start is None and exp.record.get("created"):
        try:
            start = time.mktime(time.strptime(exp.record["created"], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            start = None
    ends = [r.get("timestamp") for t in exp.trials for r in t.rows if isinstance(r.get("timestamp"), (int, float))]
    if start is None or not ends:
        return None
    return max(ends) - float(start)


def runs_time(exp: Experiment) -> float | None:
    """Seconds during which at least one trial was running: the union of each trial's span, from
    its last report's ``timestamp`` back by that report's ``time/wall``. Unlike :func:`wall_time`
    it leaves out the hours between the sessions of an experiment stopped and resumed later."""
    spans = []
    for t in exp.trials:
        timed = [r for r in t.rows if number(r.get("timestamp")) is not None and number(r.get("time/wall")) is not None]
        if timed:
            end = float(timed[-1]["timestamp"])
            spans.append((end - float(timed[-1]["time/wall"]), end))
    if not spans:
        return None
    total, reach = 0.0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            total, reach = total + end - start, end
        elif end > reach:
            total, reach = total + end - reach, end
    return total


def mean_std(values: list[Any]) -> dict[str, Any]:
    xs = [float(v) for v in values if number(v) is not None]
    return {
        "mean": statistics.fmean(xs) if xs else None,
        "std": statistics.stdev(xs) if len(xs) > 1 else (0.0 if xs else None),
        "n": len(xs),
    }


# ---------------------------------------------------------------------------------------
# Writing


def write_study(exp: Experiment, out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Write ``study.json`` and one PNG per bars study; return the Markdown lines and the plots."""
    result = study_results(exp)
    (out / "study.json").write_text(jsonio.dumps(result, indent=2))
    lines = ["## Study", ""]
    s = result["settings"]
    lines += [
        f"Every point: {s['network']}, {s['iterations']} iterations, {s['batch']} crops of {s['crop']} px, "
        f"teacher at {s['teacher_layer']}, λ1 = {s['lambda_dist']}, λ2 = {s['lambda_spt']}, grid {s['grid']} "
        "unless the point sets them; the same seeds for every point that has them (n: the seeds a point ran). "
        "Numbers are each run's final evaluation (target-val mIoU, %), mean ± std over seeds; raw numbers in "
        "`study.json`.",
        "",
    ]
    if result.get("parts"):
        runs = ", ".join(
            f"{p['experiment']} ({p['runs']} runs, commit {p['commit'] or 'unknown'}, started {p['created']}"
            + (f", trials running {p['runs_time_s'] / 60:.0f} min)" if p.get("runs_time_s") is not None else ")")
            for p in result["parts"]
        )
        lines += [f"The runs of {len(result['parts'])} experiments, read together: {runs}.", ""]
    lines += points_table(result) + [""]
    plots = []
    for key, study in result["studies"].items():
        if study["form"] == "table":
            lines += [f"### {study['title']}", ""] + class_table(result, study["points"]) + [""]
        else:
            file = bars_figure(result, study, out, f"study_{key}.png")
            plots.append((file, study["title"]))
            lines += [f"### {study['title']}", "", f"![{study['title']}]({file})", ""]
            lines += points_table(result, study["points"]) + [""]
    return lines, plots


def points_table(result: dict[str, Any], members: dict[str, str] | None = None) -> list[str]:
    """mIoU, the label-free proxies and the gap share per point (all points, or a study's)."""
    members = members or {name: name for name in result["points"]}
    b, u = result.get("baseline"), result.get("upper_bound")
    gap_title = f"gap {b}→{u} closed" if b and u else "gap closed"
    lines = [
        f"| point | runs | mIoU (oracle) | Δ vs {b or 'baseline'} [95% CI] | source-val mIoU | target entropy | "
        f"{gap_title} |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, name in members.items():
        p = result["points"][name]
        share = result["gap_closed"].get(name)
        lines.append(
            f"| {label} | {p['n']} | {_pm(p['miou'])} | {_ci(result.get('vs_baseline', {}).get(name))} | "
            f"{_pm(p['source_val_miou'])} | {_pm(p['target_entropy'], 3)} | "
            f"{'—' if share is None else f'{100 * share:.0f}%'} |"
        )
    return lines


def _ci(d: dict[str, Any] | None) -> str:
    return "—" if d is None else f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def class_table(result: dict[str, Any], members: dict[str, str]) -> list[str]:
    """Paper Table 1: per-class IoU (mean ± std over seeds), mIoU and the gap share."""
    classes = result["classes"]
    head = ["method", *(SHORT.get(c, c) for c in classes), "mIoU", "gap closed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for label, name in members.items():
        p = result["points"][name]
        share = result["gap_closed"].get(name)
        cells = [
            label,
            *(_pm(p["iou"].get(c, {}), 1) for c in classes),
            f"**{_pm(p['miou'], 1)}**",
            "—" if share is None else f"{100 * share:.0f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def bars_figure(result: dict[str, Any], study: dict[str, Any], out: Path, name: str) -> str:
    """Paper Fig. 4 / Fig. 6: mean mIoU per point, ± std, a dot per seed, baseline/oracle lines."""
    members = study["points"]
    fig, ax = plt.subplots(figsize=(1.3 * len(members) + 2.5, 4), dpi=120)
    labels = list(members)
    means = [result["points"][members[k]]["miou"]["mean"] for k in labels]
    stds = [result["points"][members[k]]["miou"]["std"] or 0.0 for k in labels]
    xs = range(len(labels))
    ax.bar(xs, [m or 0.0 for m in means], yerr=stds, capsize=5, color="C0", alpha=0.75, zorder=2, label="mean ± std")
    for i, k in enumerate(labels):
        seeds = [r["miou"] for r in result["points"][members[k]]["runs"] if r.get("miou") is not None]
        ax.scatter(
            [i + 0.12 * (j - (len(seeds) - 1) / 2) for j in range(len(seeds))],
            seeds,
            color="k",
            s=14,
            zorder=3,
            label="one seed" if i == 0 else None,
        )
        if means[i] is not None:
            ax.text(i, means[i] + stds[i] + 0.3, f"{means[i]:.1f}", ha="center", va="bottom", fontsize=9)
    for key, style in (("baseline", "--"), ("upper_bound", ":")):
        point = result.get(key)
        value = result["points"][point]["miou"]["mean"] if point else None
        if value is not None and point not in members.values():
            ax.axhline(value, color="grey", linestyle=style, linewidth=1.2, label=f"{point} {value:.1f}")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("target-val mIoU, % (final, oracle)")
    ax.set_title(study["title"], fontsize=11)
    ax.grid(True, axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _pm(stat: dict[str, Any], digits: int = 2) -> str:
    mean, std = stat.get("mean"), stat.get("std")
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if stat.get("n", 0) > 1 else f"{mean:.{digits}f}"
