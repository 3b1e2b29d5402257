"""``road-ray import-weights``: the field's DeepLab-v2 ResNet weights as a file road-ray loads.

The layouts (all of DeepLab-v2's ResNet in its Caffe form, ``road_ray/models/caffe_resnet.py``;
module names as in AdaptSegNet's ``model/deeplab.py`` / ``model/deeplab_multi.py`` and
ADVENT's ``advent/model/deeplabv2.py``):

=================  ==============================================  ==========================
origin             keys                                            classifier(s)
=================  ==============================================  ==========================
deeplabv2-init     ``Scale.conv1.*``, ``Scale.layerK.*``            ``Scale.layer5``: 21 classes
                   (``DeepLab_resnet_pretrained_init``)             on layer4 (MS-COCO/VOC)
adaptsegnet        ``conv1.*``, ``layerK.*``                        single-level: ``layer5`` on
                                                                    layer4; multi-level:
                                                                    ``layer5`` on layer3 (aux),
                                                                    ``layer6`` on layer4
advent             ``conv1.*``, ``layerK.*``                        ``layer6`` on layer4, and
                                                                    ``layer5`` on layer3 (aux)
                                                                    when multi-level
=================  ==============================================  ==========================

(a ``module.`` prefix of DataParallel is removed first). The backbone keys land on road-ray's
``backbone.*`` unchanged (the field kept torchvision's module names); the classifier on layer4,
``layerN.conv2d_list.i``, lands on the head's ``head.branches.i`` when it has ``num_classes``
classes (the init file's 21-class one does not: the field drops it too and starts the head from
N(0, 0.01)). The auxiliary classifier on layer3 of the multi-level checkpoints is dropped:
road-ray's DeepLab-v2 has the main classifier only.

**AdaptSegNet sums two branches.** AdaptSegNet's ``Classifier_Module.forward`` returns inside
its loop, so its networks compute ``conv2d_list.0(x) + conv2d_list.1(x)`` (rates 6 and 12) and
never train branches 2 and 3. With ``origin="adaptsegnet"`` those two branches are imported as
zeros, so the imported network computes exactly what AdaptSegNet's did (and the two branches
then train from zero). ADVENT's ``ClassifierModule`` sums all four. The multi-level layout is the
same in both projects, so there ``origin`` must be given.

The output file (:data:`road_ray.models.weights.WEIGHTS_FORMAT`) is a dict: ``format``,
``resnet_style`` ("caffe"), ``backbone``, ``origin``, ``num_classes`` (of the kept classifier,
or None) and ``state_dict`` (Segmenter keys). ``model.pretrained=FILE`` with
``model.backbone=resnet101`` loads it (the Caffe geometry is required and checked).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from road_ray.models.caffe_resnet import CaffeResNetBackbone
from road_ray.models.weights import WEIGHTS_FORMAT, read_torch_file

ORIGINS = ("auto", "deeplabv2-init", "adaptsegnet", "advent")
_BACKBONE_KEY = re.compile(
    r"^(conv1|bn1|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))"
    r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
_CLASSIFIER_KEY = re.compile(r"^(layer[56])\.conv2d_list\.([0-9]+)\.(weight|bias)$")
_DEPTHS = {6: 50, 23: 101}  # blocks in layer3 -> ResNet depth
_SHOWN = 10  # keys listed in an error


@dataclass
class Imported:
    """A converted state dict and what happened to the source's parts."""

    state_dict: dict[str, Tensor]
    origin: str
    depth: int
    num_classes: int | None  # of the classifier kept as the head; None: backbone only
    notes: list[str] = field(default_factory=list)


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def describe_field_layout(state: dict[str, Tensor]) -> str | None:
    """A phrase naming the field's layout of ``state``, or None when it is not one."""
    keys = list(_strip(state, "module."))
    if any(k.startswith("Scale.") for k in keys):
        return "DeepLab-v2 init file (keys Scale.*)"
    if any(_CLASSIFIER_KEY.match(k) for k in keys):
        return "DeepLab-v2 checkpoint in the AdaptSegNet/ADVENT layout (layer5/layer6.conv2d_list.*)"
    return None


def _unmatched_error(source: str, unmatched: list[str]) -> ValueError:
    shown = ", ".join(unmatched[:_SHOWN]) + (
        f", ... ({len(unmatched) - _SHOWN} more)" if len(unmatched) > _SHOWN else ""
    )
    return ValueError(
        f"{source}: unknown weights layout: {len(unmatched)} keys match no DeepLab-v2 ResNet layout "
        f"(init file, AdaptSegNet, ADVENT): {shown}"
    )


def _classifiers(state: dict[str, Tensor], source: str) -> dict[str, dict[str, Tensor]]:
    """``{"layer5": {"0.weight": ..., ...}, ...}`` of the ``conv2d_list`` classifiers."""
    found: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        m = _CLASSIFIER_KEY.match(key)
        if m:
            found.setdefault(m.group(1), {})[f"{m.group(2)}.{m.group(3)}"] = value
    for name, params in found.items():
        if sorted(params) != sorted(f"{i}.{p}" for i in range(4) for p in ("weight", "bias")):
            raise ValueError(f"{source}: {name} is not a 4-branch ASPP classifier: it holds {sorted(params)}")
    return found


# Classifier layouts (name -> input channels) and the projects that write them.
_LAYOUTS: list[tuple[dict[str, int], str, tuple[str, ...]]] = [
    ({"layer6": 2048}, "ADVENT's single-level layout (layer6)", ("advent",)),
    ({"layer5": 1024, "layer6": 2048}, "the multi-level layout of AdaptSegNet and ADVENT", ("adaptsegnet", "advent")),
    (
        {"layer5": 2048},
        "the single-level layout of AdaptSegNet / DeepLab-v2 (layer5)",
        ("adaptsegnet", "deeplabv2-init"),
    ),
]


def _resolve_origin(origin: str, scaled: bool, inputs: dict[str, int], source: str) -> str:
    """Which project wrote the file, from its layout and ``origin`` (checked against each other)."""
    if not inputs and not scaled:
        return "deeplabv2-init" if origin == "auto" else origin  # backbone only: the origin changes nothing
    if scaled:
        layout, allowed = "the DeepLab-v2 init layout (Scale.*)", ("deeplabv2-init",)
    else:
        match = [(name, projects) for layout, name, projects in _LAYOUTS if layout == inputs]
        if not match:
            raise ValueError(f"{source}: classifiers {inputs} (name: input channels) match no DeepLab-v2 layout")
        layout, allowed = match[0]
    if origin == "auto" and len(allowed) == 1:
        return allowed[0]
    if origin not in allowed:
        why = f"not {origin!r}" if origin != "auto" else "adaptsegnet's ASPP sums only its first two branches"
        raise ValueError(f"{source} is in {layout}: give its origin, --from {' or --from '.join(allowed)} ({why})")
    return origin


def _backbone(state: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], int]:
    """The backbone tensors under road-ray's ``backbone.*`` keys, checked against the Caffe
    ResNet's keys and shapes; and the depth."""
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("layer3.")}
    depth = _DEPTHS.get(len(blocks))
    if depth is None:
        raise ValueError(f"{source}: layer3 has {len(blocks)} blocks; expected 6 (ResNet-50) or 23 (ResNet-101)")
    with torch.device("meta"):  # keys and shapes only: no memory, no init cost
        expected = CaffeResNetBackbone(depth).state_dict()
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise _unmatched_error(source, unexpected)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(
            f"{source}: not a whole DeepLab-v2 ResNet-{depth}: {len(missing)} missing keys (first: {missing[:5]})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(
                f"{source}: {k} has shape {list(v.shape)}, DeepLab-v2 ResNet-{depth} has {list(expected[k].shape)}"
            )
    return {f"backbone.{k}": v for k, v in state.items()}, depth


def convert_field_state(
    state: dict[str, Tensor], num_classes: int, origin: str = "auto", source: str = "weights"
) -> Imported:
    """Map a field state dict (module docstring) onto road-ray's DeepLab-v2 ResNet Segmenter keys.

    An unknown layout is a one-line ValueError listing the keys no rule matched.
    """
    if origin not in ORIGINS:
        raise ValueError(f"origin {origin!r}: expected one of {', '.join(ORIGINS)}")
    state = _strip(state, "module.")
    scaled = any(k.startswith("Scale.") for k in state)
    state = _strip(state, "Scale.")
    unmatched = [k for k in state if not (_BACKBONE_KEY.match(k) or _CLASSIFIER_KEY.match(k))]
    if unmatched:
        raise _unmatched_error(source, unmatched)
    classifiers = _classifiers(state, source)
    inputs = {name: int(params["0.weight"].shape[1]) for name, params in classifiers.items()}
    origin = _resolve_origin(origin, scaled, inputs, source)
    out, depth = _backbone({k: v for k, v in state.items() if _BACKBONE_KEY.match(k)}, source)
    result = Imported(out, origin, depth, None)
    for name, params in sorted(classifiers.items()):
        classes = int(params["0.weight"].shape[0])
        if inputs[name] == 1024:
            result.notes.append(
                f"dropped {name}, the auxiliary classifier on layer3 (multi-level): not part of road-ray's DeepLab-v2"
            )
        elif classes != num_classes:
            result.notes.append(
                f"dropped {name}, a {classes}-class classifier (not {num_classes}): the head starts fresh, N(0, 0.01)"
            )
        else:
            _add_head(result, params, zero_late_branches=origin == "adaptsegnet")
            result.num_classes = classes
            result.notes.append(f"kept {name} as the head ({classes} classes)")
    return result


def _add_head(result: Imported, params: dict[str, Tensor], zero_late_branches: bool) -> None:
    for key, value in params.items():
        branch = int(key.split(".")[0])
        if zero_late_branches and branch >= 2:
            value = torch.zeros_like(value)
        result.state_dict[f"head.branches.{key}"] = value
    if zero_late_branches:
        result.notes.append(
            "branches 2-3 (rates 18, 24) imported as zeros: AdaptSegNet's classifier sums only branches 0-1, "
            "so the network computes what AdaptSegNet's did"
        )


def _read(path: str) -> dict[str, Tensor]:
    state = read_torch_file(path)
    for wrapper in ("state_dict", "model"):  # {"state_dict": {...}} as some training scripts save
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(
            f"weights file {str(path)!r}: expected a state dict (names to tensors), got {type(state).__name__}"
        )
    return state


def import_weights(path: str, out: str, num_classes: int = 19, origin: str = "auto") -> Imported:
    """Convert the field's file ``path`` (:func:`convert_field_state`) and write ``out``."""
    imported = convert_field_state(_read(path), num_classes, origin, f"weights file {str(path)!r}")
    payload: dict[str, Any] = {
        "format": WEIGHTS_FORMAT,
        "resnet_style": "caffe",
        "backbone": f"resnet{imported.depth}",
        "origin": imported.origin,
        "num_classes": imported.num_classes,
        "state_dict": imported.state_dict,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)
    return imported


def import_from_cli(args: argparse.Namespace) -> None:
    """``road-ray import-weights FILE --out OUT [--from ORIGIN] [--num-classes N]``."""
    imported = import_weights(args.file, args.out, args.num_classes, args.origin)
    print(
        f"wrote {args.out}: DeepLab-v2 ResNet-{imported.depth} (Caffe style) from {args.file} ({imported.origin}); "
        + "; ".join(imported.notes or ["backbone only"])
    )
    print(
        f"use it with: --set model.arch=deeplabv2 --set model.backbone=resnet{imported.depth} "
        f"--set model.pretrained={args.out}"
    )
