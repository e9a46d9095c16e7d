"""What specc knows of a timm encoder (``backbone.timm``): its stages, read from timm itself.

timm builds the encoder (``timm.create_model(name, features_only=True, ...)``); specc sees it at
stage granularity only. The encoder is created once per name, output stride and input size on
the meta device (no memory, no weights, nothing downloaded) and run on a meta image: its
``feature_info`` gives each stage's channels and reduction (timm's own output-stride support
turns strides past it into dilation, so reductions stop at the output stride), the meta run
gives each stage's feature size, and the module the parameter counts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

from specc.errors import SpecError

#: The spec key every error about the encoder is placed at.
KEY = "backbone.timm"


@dataclass(frozen=True)
class EncoderStage:
    """One feature a timm encoder hands out."""

    #: The timm module that makes it (``layer1``, ``stages.0``, ``blocks.4``), and its name in
    #: the features-only encoder (``stages_0`` where timm's wrapper flattens nested modules).
    module: str
    path: str
    channels: int
    #: Input size / feature size at the spec's output stride, and without one (timm's default).
    reduction: int
    nominal_reduction: int
    h: int
    w: int
    #: Parameters of the encoder between the previous stage's feature and this one.
    params: int


def create_encoder(name: str, output_stride: int, **kwargs: object) -> object:
    """timm's features-only encoder ``name`` at ``output_stride``, random weights.

    Raises:
        SpecError: timm is missing, knows no such model, or the model has no features-only
            form or no output-stride support.
    """
    try:
        import timm
    except ImportError:
        raise SpecError(f"backbone.timm: {name} needs the timm package; install it with "
                        "`pip install timm`", path=KEY) from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise SpecError(f"expected a timm model name, found {name!r}{hint}", path=KEY)
    stride = {} if output_stride == 32 else {"output_stride": output_stride}
    try:
        return timm.create_model(name, features_only=True, pretrained=False, **stride, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        why = str(err) or ("it has no output-stride support" if output_stride != 32
                           else type(err).__name__)
        raise SpecError(f"timm cannot build {name} as a features-only encoder at output stride "
                        f"{output_stride}: {why}", path=KEY) from None


@lru_cache(maxsize=32)
def encoder_stages(name: str, output_stride: int, size: tuple[int, int]
                   ) -> tuple[EncoderStage, ...]:
    """The stages of timm's ``name`` at ``output_stride`` for ``size`` images (see module doc)."""
    import torch

    with torch.device("meta"):
        encoder = create_encoder(name, output_stride)
        nominal = create_encoder(name, 32).feature_info.reduction()
        features = _run(encoder, name, size)
    info = encoder.feature_info
    modules = info.module_name()
    params = _stage_params(encoder, modules)
    names = {name for name, _ in encoder.named_modules()}
    paths = [m if m in names else m.replace(".", "_") for m in modules]
    return tuple(EncoderStage(m, q, c, r, n, f.shape[2], f.shape[3], p)
                 for m, q, c, r, n, f, p in zip(modules, paths, info.channels(), info.reduction(),
                                                nominal, features, params, strict=True))


def _run(encoder: object, name: str, size: tuple[int, int]) -> list[object]:
    """The encoder's features for one ``size`` image (on the meta device: shapes only).

    Raises:
        SpecError: the encoder cannot run at that size (some need multiples of 32).
    """
    import torch

    try:
        with torch.no_grad():
            return encoder.eval()(torch.empty(1, 3, *size))  # type: ignore[attr-defined, operator]
    except (RuntimeError, ValueError, AssertionError) as err:
        why = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise SpecError(f"timm's {name} cannot run on a {size[0]}×{size[1]} input ({why}); "
                        "choose an input.size it accepts", path=KEY) from None


def _stage_params(encoder: object, modules: list[str]) -> list[int]:
    """Parameters per stage: each parameter counts toward the first stage at or after the
    module that holds it (the stem's go to the first stage, anything past the last to it)."""
    order = [m.replace(".", "_") for m in modules]
    counts = [0] * len(modules)
    stage = 0
    for key, p in encoder.named_parameters():  # type: ignore[attr-defined]
        flat = key.replace(".", "_")
        while stage < len(order) - 1 and _before(order[stage], flat, order):
            stage += 1
        counts[stage] += p.numel()
    return counts


def _before(module: str, key: str, order: list[str]) -> bool:
    """Whether ``key`` lies past ``module``: it is in a later stage's module."""
    later = order[order.index(module) + 1:]
    return any(key == m or key.startswith(m + "_") for m in later)


def full_model_names(encoder_names: list[str], full_names: set[str]) -> dict[str, str]:
    """Each features-only encoder tensor name → the name in timm's whole model (``stages_0.…``
    → ``stages.0.…``: timm's features-only wrappers join the first levels of a nested module's
    name with ``_``). Names found in neither form are left out."""
    out = {}
    for name in encoder_names:
        first, _, rest = name.partition(".")
        for candidate in _dotted_forms(first):
            full = f"{candidate}.{rest}" if rest else candidate
            if full in full_names:
                out[name] = full
                break
    return out


def _dotted_forms(name: str) -> list[str]:
    """``name`` as is, then with each choice of its ``_`` read as ``.`` (fewest first)."""
    parts = name.split("_")
    forms = []
    for mask in range(2 ** (len(parts) - 1)):
        joined = parts[0]
        for i, part in enumerate(parts[1:]):
            joined += ("." if mask >> i & 1 else "_") + part
        forms.append(joined)
    return sorted(forms, key=lambda f: f.count("."))


@lru_cache(maxsize=8)
def weight_names(name: str, output_stride: int) -> tuple[dict[str, str], tuple[str, ...]]:
    """Where timm's whole model ``name`` keeps each tensor of its features-only encoder
    (encoder name → whole-model name), and the whole model's tensors the encoder has no use for
    (its classifier and final layers), both read from models on the meta device."""
    import timm
    import torch

    with torch.device("meta"):
        encoder = create_encoder(name, output_stride)
        whole = timm.create_model(name, pretrained=False)
    full = set(whole.state_dict())
    mapped = full_model_names(list(encoder.state_dict()), full)  # type: ignore[attr-defined]
    unused = tuple(sorted(full - set(mapped.values())))
    return mapped, unused
