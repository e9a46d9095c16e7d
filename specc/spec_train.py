"""The ``train:`` and ``data:`` sections of a spec: the papers' protocol as defaults.

Each default cites where it comes from (DeepLabv3 §4.1 unless noted). Every value can be changed
in the spec or with ``--set train.lr=0.01`` / the ``specc train`` flags.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator

#: Largest channel count, spatial size (pixels), stride or rate a spec may give: far past any
#: DeepLab (2048 channels, 513-pixel crops, rate 36), small enough to refuse a typo's billions
#: before anything is allocated.
MAX_SIZE = 16384
#: Most images a data split or a batch may hold (a sampler allocates one index per image).
MAX_IMAGES = 10_000_000

#: A whole number > 0; strict, so that YAML's ``true``/``yes`` is not read as 1.
Positive = Annotated[int, Strict(), Field(gt=0)]
#: A size in pixels, 1 .. MAX_SIZE.
Size = Annotated[int, Strict(), Field(gt=0, le=MAX_SIZE)]
#: A number of images, 1 .. MAX_IMAGES.
Images = Annotated[int, Strict(), Field(gt=0, le=MAX_IMAGES)]


def _fp32_from_none(value: object) -> object:
    """``none``, the old ``train.amp`` spelling of full precision, read as ``fp32``."""
    return "fp32" if value == "none" else value


#: The arithmetic of a training step (``train.precision``); ``none`` is accepted as ``fp32``.
Precision = Annotated[Literal["fp32", "bf16", "fp16"], BeforeValidator(_fp32_from_none)]


class _Base(BaseModel):
    # allow_inf_nan: a learning rate of .inf or .nan would only show up as a NaN loss later
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


#: Most micro-batches one step may accumulate, and most iterations a setting may count.
MAX_ACCUMULATE = 1024
#: Largest learning-rate multiplier of a parameter group.
MAX_LR_MULT = 1e4


class LossSpec(_Base):
    """The per-pixel loss: cross-entropy, optionally restricted to the hardest pixels."""

    kind: Literal["cross_entropy", "hard_pixel"] = Field(
        "cross_entropy", description="cross_entropy: the mean over labelled pixels (DeepLabv3 "
        "§4.1); hard_pixel: the mean over the top_k fraction of highest pixel losses (the TF "
        "DeepLab code's top_k_percent_pixels).")
    top_k: float = Field(
        0.25, gt=0, le=1, description="hard_pixel: fraction of the labelled pixels of a batch "
        "whose losses are kept (0.25).")
    warmup_iters: int = Field(
        0, ge=0, description="hard_pixel: iterations at the start that use every labelled "
        "pixel before mining begins (0).")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy targets (0: none).")
    class_weights: list[Annotated[float, Field(ge=0, le=1e6)]] | None = Field(
        None, description="One weight per class (num_classes of them), or null for equal "
        "weights; `specc class-weights SPEC` computes them from the training labels.")


class TrainSpec(_Base):
    iters: Positive = Field(30_000, description="Training iterations (30k on VOC trainaug).")
    batch_size: Images = Field(16, description="Images per step, all processes together (16).")
    lr: float = Field(0.007, gt=0, description="Initial learning rate (0.007).")
    poly_power: float = Field(0.9, gt=0, description="Poly schedule: lr·(1 − it/iters)^power.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (0.9).")
    weight_decay: float = Field(
        4e-5, ge=0, description="L2 weight decay (4e-5; 1e-4 for ResNet in the TF code).")
    bn_decay: float = Field(
        0.9997, gt=0, lt=1, description="Batch-norm moving-average decay (0.9997 → PyTorch "
        "momentum 0.0003).")
    freeze_bn: bool = Field(
        False, description="Freeze BN statistics and affine parameters (the second stage, "
        "fine-tuning at output stride 8).")
    aux_weight: float = Field(0.4, ge=0, description="Weight of the auxiliary loss (torchvision).")
    ignore_index: int = Field(
        255, description="Label ignored by loss and metrics: 255, the value every data reader "
        "gives unlabelled pixels (VOC's void border).")
    hard_classes: list[Annotated[int, Field(ge=0, le=65535)]] = Field(
        default_factory=list, description="Classes whose images are oversampled (DeepLabv3 "
        "§4.3 bootstrapping; VOC: bicycle 2, chair 9, table 11, plant 16, sofa 18).")
    hard_repeat: Positive = Field(2, description="How many times a hard image appears per epoch.")
    precision: Precision = Field(
        "fp32", description="Arithmetic of the forward pass: fp32, bf16 autocast (CUDA, or a CPU "
        "with native bf16: AVX-512 bf16 or AMX) or fp16 autocast with loss scaling (CUDA). "
        "Formerly train.amp, whose 'none' means fp32.")
    channels_last: bool | None = Field(
        None, description="channels_last memory format for weights and images (faster "
        "convolutions; dropout then draws its mask in another order). Default (null): on the "
        "CPU, where batch norm then computes its statistics with specc's exact pass; off on "
        "CUDA.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed for weights, sampling and augmentation.")
    workers: int = Field(2, ge=0, le=256, description="Data-loading worker processes; 0 reads "
                         "in the training process (ahead, in a thread, where the step leaves a "
                         "core free: on a GPU, or with fewer torch threads than cores).")
    log_every: Positive = Field(10, description="Iterations between metrics.jsonl records.")
    save_every: Positive = Field(1000, description="Iterations between checkpoints.")
    eval_every: int = Field(0, ge=0, description="Iterations between evaluations (0: at the end).")
    loss: LossSpec = Field(default_factory=LossSpec, description="The pixel loss (main and "
                           "auxiliary head alike).")
    accumulate: int = Field(
        1, strict=True, gt=0, le=MAX_ACCUMULATE, description="Batches whose gradients are "
        "summed before one update: the effective batch is batch_size × accumulate (1).")
    freeze_backbone_iters: int = Field(
        0, strict=True, ge=0, description="Iterations at the start during which the backbone's "
        "parameters are not updated (fine-tuning new heads first; 0).")
    lr_mult: dict[str, Annotated[float, Field(gt=0, le=MAX_LR_MULT)]] = Field(
        default_factory=dict, description="Learning-rate multipliers by module: `backbone`, "
        "`heads` (every module after the backbone), a head (`aspp`, `decoder`, `classifier`, "
        "`aux`) or a deeper module path (`backbone.block4`); the longest matching key wins, "
        "the rest keep 1. E.g. {backbone: 1, heads: 10}.")
    compile: bool = Field(
        False, description="Compile the training module with torch.compile (a slow first step, "
        "then faster ones; needs a C++ compiler on the CPU).")

    @field_validator("ignore_index")
    @classmethod
    def _reader_ignore(cls, ignore_index: int) -> int:
        if ignore_index != 255:
            raise ValueError(
                f"expected 255, found {ignore_index}: every data reader marks unlabelled pixels "
                "255 (a folder data set's masks hold 255 there; the VOC, Cityscapes and ADE20K "
                "readers map their void labels to it), so no other value would be skipped")
        return ignore_index


class SyntheticSpec(_Base):
    size: Size = Field(128, description="Side of the generated square images.")
    train_length: Images = Field(2000, description="Images in the train split.")
    val_length: Images = Field(200, description="Images in the val split.")


class ColorJitterSpec(_Base):
    """Random colour changes (torchvision.transforms.v2.ColorJitter); 0 leaves one unchanged."""

    brightness: float = Field(0.0, ge=0, le=10, description="Brightness factor drawn from "
                              "[1 − b, 1 + b].")
    contrast: float = Field(0.0, ge=0, le=10, description="Contrast factor drawn from "
                            "[1 − c, 1 + c].")
    saturation: float = Field(0.0, ge=0, le=10, description="Saturation factor drawn from "
                              "[1 − s, 1 + s].")
    hue: float = Field(0.0, ge=0, le=0.5, description="Hue shift drawn from [−h, h].")
    probability: float = Field(1.0, ge=0, le=1, description="Chance that an image is jittered.")


class BlurSpec(_Base):
    """Random Gaussian blur (torchvision.transforms.v2.GaussianBlur)."""

    kernel: int = Field(5, strict=True, ge=3, le=63, description="Kernel side, odd.")
    sigma: tuple[float, float] = Field(
        (0.1, 2.0), description="Range the blur's standard deviation is drawn from (pixels).")
    probability: float = Field(0.5, ge=0, le=1, description="Chance that an image is blurred.")

    @field_validator("kernel")
    @classmethod
    def _odd(cls, kernel: int) -> int:
        if kernel % 2 == 0:
            raise ValueError(f"expected an odd kernel size, found {kernel}")
        return kernel

    @field_validator("sigma")
    @classmethod
    def _sigma_range(cls, sigma: tuple[float, float]) -> tuple[float, float]:
        if not 0 < sigma[0] <= sigma[1] <= 100:
            raise ValueError(f"expected 0 < low <= high <= 100, found {list(sigma)}")
        return sigma


class DataSpec(_Base):
    source: str = Field(
        "synthetic", description="synthetic, voc:PATH, cityscapes:PATH, ade20k:PATH or folder:PATH.")
    train_split: str = Field("train", description="Split used for training (VOC: train_aug).")
    val_split: str = Field("val", description="Split used for evaluation.")
    scale_min: float = Field(0.5, gt=0, description="Smallest random scale (0.5).")
    scale_max: float = Field(2.0, gt=0, description="Largest random scale (2.0).")
    scale_step: float = Field(0.25, gt=0, description="Step between random scales (0.25).")
    flip: bool = Field(True, description="Random left-right flip.")
    crop: tuple[Size, Size] | None = Field(
        None, description="Training crop (H, W); defaults to input.size.")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec,
                                     description="The built-in data set.")
    color_jitter: ColorJitterSpec | None = Field(
        None, description="Photometric augmentation of training images: random brightness, "
        "contrast, saturation and hue (null: off, the papers' protocol).")
    blur: BlurSpec | None = Field(
        None, description="Random Gaussian blur of training images (null: off).")
