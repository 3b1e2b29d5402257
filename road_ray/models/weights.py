"""Building backbones and loading pretrained weights into them (and into a head).

``model.pretrained`` names the weights: ``"none"`` (random init), ``"auto"`` (torchvision's
ImageNet weights; for the small backbone the training engine resolves it to a
MiniCity-pretrained file first) or a file. A file is one of

- a state dict: a backbone's, a torchvision model's (``fc.*`` / ``classifier.*`` are not the
  backbone's; a VGG-16 ``classifier`` initialises DeepLab-v2's fc6/fc7), a Segmenter's
  (``backbone.*``, and ``head.*`` which the head then loads) or a DDP-wrapped one (``module.``);
- a road-ray weights file written by ``road-ray import-weights`` from the field's DeepLab-v2
  weights (:data:`WEIGHTS_FORMAT`): a Segmenter state dict plus the ResNet geometry it needs.

A file in one of the field's own layouts (``Scale.*``, ``layer5/6.conv2d_list.*``) is refused
with the command that converts it: loaded as it is, it would fit the wrong geometry silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor

from road_ray.config import BackboneName
from road_ray.models.backbones import Backbone, ResNetBackbone, SmallBackbone, VGGBackbone
from road_ray.models.caffe_resnet import CaffeResNetBackbone

# The "format" entry of a file written by road-ray import-weights (road_ray/models/import_weights.py).
WEIGHTS_FORMAT = "road-ray-weights/1"


@dataclass
class Weights:
    """Pretrained weights as read: the raw state dict, where it came from (for errors), and the
    ResNet geometry an imported file declares (None for a plain state dict)."""

    state: dict[str, Tensor]
    source: str
    resnet_style: str | None = None


def read_torch_file(path: str | Path, what: str = "weights file") -> Any:
    """``torch.load(weights_only=True)`` on the CPU, with one clear line when the file is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} {str(p)!r} does not exist")
    try:
        return torch.load(p, weights_only=True, map_location="cpu")
    except Exception as e:  # pickle/zip errors come in many types
        raise ValueError(f"could not read {what} {str(p)!r}: {e}") from None


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _check_state(state: object, source: str) -> dict[str, Tensor]:
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(
            f"{source}: expected a state dict (mapping of parameter names to tensors), got {type(state).__name__}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = _strip_prefix(state, "module.")
    return state


def _as_backbone_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The backbone's part: ``backbone.*`` of a Segmenter's state dict, else everything but a
    torchvision classifier (``fc.*`` / ``classifier.*``)."""
    if any(k.startswith("backbone.") for k in state):
        return _strip_prefix(state, "backbone.")
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}


def head_state(weights: Weights) -> dict[str, Tensor]:
    """The ``head.*`` entries of a Segmenter-shaped file, prefix removed (empty if none)."""
    return _strip_prefix(weights.state, "head.")


def load_state(module: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with one-line errors naming ``source`` and the first
    offending keys; BatchNorm ``num_batches_tracked`` may be absent (old files carry none)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the {type(module).__name__}: "
            f"{len(missing)} missing keys (first: {missing[:5]}), {len(unexpected)} unexpected keys (first: {unexpected[:5]})"
        )
    state = dict(state)
    for k, v in expected.items():
        if k not in state:
            state[k] = v
        elif state[k].shape != v.shape:
            raise ValueError(f"{source}: {k} has shape {list(state[k].shape)}, the model expects {list(v.shape)}")
    module.load_state_dict(state, strict=True)


def _field_layout_error(state: dict[str, Tensor], source: str, path: str) -> None:
    """Refuse the field's own DeepLab-v2 layouts (they need road-ray import-weights)."""
    from road_ray.models.import_weights import describe_field_layout

    layout = describe_field_layout(state)
    if layout is not None:
        raise ValueError(f"{source} is a {layout}; convert it first: road-ray import-weights {path} --out FILE.pt")


def read_weights_file(path: str) -> Weights:
    """Read a weights file (module docstring); a missing or unreadable file, or one in the
    field's layout, is a ValueError naming it."""
    p = Path(path)
    source = f"weights file {str(p)!r}"
    payload = read_torch_file(p, "pretrained weights file")
    if isinstance(payload, dict) and payload.get("format") == WEIGHTS_FORMAT:
        return Weights(_check_state(payload.get("state_dict"), source), source, payload.get("resnet_style"))
    state = _check_state(payload, source)
    _field_layout_error(state, source, str(p))
    return Weights(state, source)


def _torchvision_weights(name: BackboneName) -> torchvision.models.WeightsEnum:
    weights = {
        "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
        "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
        "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
    }
    return weights[name]


def read_weights(name: BackboneName, pretrained: str, resnet_style: str = "torchvision") -> Weights | None:
    """The weights ``model.pretrained`` names for backbone ``name`` (None for ``"none"``)."""
    if pretrained == "none":
        return None
    if pretrained != "auto":
        weights = read_weights_file(pretrained)
        if weights.resnet_style is not None and weights.resnet_style != resnet_style:
            raise ValueError(
                f"model.resnet_style: {weights.source} holds a {weights.resnet_style}-style ResNet "
                f"(road-ray import-weights), but the network is {resnet_style}-style; set "
                f"model.resnet_style={weights.resnet_style}"
            )
        return weights
    if name == "small":
        raise ValueError(
            "model.pretrained='auto' for the small backbone is resolved by the training engine "
            "(MiniCity pretraining); pass a weights file path or 'none' to build_segmenter/build_teacher"
        )
    if resnet_style == "caffe":
        raise ValueError(
            "model.pretrained='auto': torchvision has no weights for the Caffe-style DeepLab-v2 ResNet "
            "(model.resnet_style caffe, the default for model.arch=deeplabv2); convert the field's "
            "DeepLab_resnet_pretrained_init file with road-ray import-weights and pass it as model.pretrained, "
            "or set model.resnet_style=torchvision for torchvision's ImageNet weights"
        )
    tv = _torchvision_weights(name)
    try:
        state = tv.get_state_dict(progress=True)
    except Exception as e:  # no network, proxy, corrupt cache, ...
        raise RuntimeError(
            f"could not fetch torchvision's ImageNet weights {tv} for {name} ({e}); download "
            f"{tv.url} on a machine with internet and pass --set model.pretrained=PATH"
        ) from e
    return Weights(_check_state(state, f"torchvision weights {tv}"), f"torchvision weights {tv}")


def make_backbone(name: BackboneName, resnet_style: str = "torchvision") -> Backbone:
    """A randomly initialised backbone ``name``; ``resnet_style`` ``"caffe"`` builds the
    DeepLab-v2 geometry of ``road_ray/models/caffe_resnet.py`` for the ResNets."""
    depths = {"resnet50": 50, "resnet101": 101}
    if name == "small":
        return SmallBackbone()
    if name == "vgg16":
        return VGGBackbone()
    if name in depths:
        return CaffeResNetBackbone(depths[name]) if resnet_style == "caffe" else ResNetBackbone(depths[name])
    raise ValueError(f"unknown backbone {name!r}; expected one of small, vgg16, {', '.join(depths)}")


def load_backbone(backbone: Backbone, weights: Weights) -> None:
    """Load the backbone's part of ``weights`` (strict, one-line errors naming the source)."""
    load_state(backbone, _as_backbone_state(weights.state), weights.source)


def load_backbone_weights(backbone: Backbone, path: str) -> None:
    """Load a weights file (module docstring) into ``backbone``.

    A missing/unreadable file or keys/shapes that do not match raise ValueError naming
    the file and the first offending keys.
    """
    load_backbone(backbone, read_weights_file(path))


def build_backbone(name: BackboneName, pretrained: str = "none", *, resnet_style: str = "torchvision") -> Backbone:
    """Build backbone ``name`` with weights ``pretrained``: ``"none"`` (random init), a
    weights file, or ``"auto"`` (torchvision's ImageNet weights; for ``"small"`` the
    training engine resolves ``"auto"`` to a MiniCity-pretrained file first)."""
    backbone = make_backbone(name, resnet_style)
    weights = read_weights(name, pretrained, resnet_style)
    if weights is not None:
        load_backbone(backbone, weights)
    return backbone
