"""The config tree: typed, frozen dataclasses with py-faster-rcnn's key names and defaults, and next to them
:data:`RULES`, the one table of every key's type and range (docs/REFERENCE.md §1 for the meaning of each key).

Every section checks its values against :data:`RULES` when it is built (``__post_init__``), plus the few
cross-key rules py-faster-rcnn relies on (:func:`_train_cross_checks`, :func:`_config_cross_checks`), so a bad
value is a :class:`~frcnn_trt.errors.ConfigError` naming the key and the value wherever it comes from: a YAML
file, ``--set``, a checkpoint sidecar or :func:`dataclasses.replace` in code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from frcnn_trt.config.rules import Bool, Choice, Float, Int, Rule, Seq, Text, check_section
from frcnn_trt.errors import ConfigError

Floats4 = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrainConfig:
    """``cfg.TRAIN`` (``lib/fast_rcnn/config.py`` lines 33-124)."""

    SCALES: tuple[int, ...] = (600,)
    MAX_SIZE: int = 1000
    IMS_PER_BATCH: int = 2
    BATCH_SIZE: int = 128
    FG_FRACTION: float = 0.25
    FG_THRESH: float = 0.5
    BG_THRESH_HI: float = 0.5
    BG_THRESH_LO: float = 0.1
    USE_FLIPPED: bool = True
    BBOX_REG: bool = True
    BBOX_THRESH: float = 0.5
    SNAPSHOT_ITERS: int = 10000
    SNAPSHOT_INFIX: str = ""
    USE_PREFETCH: bool = False
    BBOX_NORMALIZE_TARGETS: bool = True
    BBOX_INSIDE_WEIGHTS: Floats4 = (1.0, 1.0, 1.0, 1.0)
    BBOX_NORMALIZE_TARGETS_PRECOMPUTED: bool = False
    BBOX_NORMALIZE_MEANS: Floats4 = (0.0, 0.0, 0.0, 0.0)
    BBOX_NORMALIZE_STDS: Floats4 = (0.1, 0.1, 0.2, 0.2)
    PROPOSAL_METHOD: str = "selective_search"
    ASPECT_GROUPING: bool = True
    HAS_RPN: bool = False
    RPN_POSITIVE_OVERLAP: float = 0.7
    RPN_NEGATIVE_OVERLAP: float = 0.3
    RPN_CLOBBER_POSITIVES: bool = False
    RPN_FG_FRACTION: float = 0.5
    RPN_BATCHSIZE: int = 256
    RPN_NMS_THRESH: float = 0.7
    RPN_PRE_NMS_TOP_N: int = 12000
    RPN_POST_NMS_TOP_N: int = 2000
    RPN_MIN_SIZE: int = 16
    RPN_BBOX_INSIDE_WEIGHTS: Floats4 = (1.0, 1.0, 1.0, 1.0)
    RPN_POSITIVE_WEIGHT: float = -1.0
    # frcnn-trt: difficult objects in training (py-faster-rcnn's pascal_voc ``use_diff``).
    USE_DIFF: bool = False
    # frcnn-trt: DataLoader worker processes for background prefetch.
    NUM_WORKERS: int = 2
    # frcnn-trt: host memory (MiB) for the conv features of training images while the shared conv is frozen
    # (alt-opt stage 2), reused each time an image comes round again; 0 = off (frcnn_trt.train.feature_cache).
    FEATURE_CACHE_MB: int = 2048
    # frcnn-trt: with the cache, images of mixed-size (zero-padded) batches use their own unpadded features, as at
    # test time, instead of their padded blob's: not py-faster-rcnn's numbers, but the cache serves those batches.
    FEATURE_CACHE_UNPADDED: bool = False
    # frcnn-trt: how the training images are checked when the roidb is built: "header" (format, true size vs the
    # annotation, pixel budget; cached by file stats) or "full" (also decode every image).
    VERIFY_IMAGES: str = "header"

    def __post_init__(self) -> None:
        _check(self, "TRAIN.")
        _train_cross_checks(self)


@dataclass(frozen=True)
class TestConfig:
    """``cfg.TEST`` (``lib/fast_rcnn/config.py`` lines 131-164) plus test_net's arguments."""

    __test__ = False  # not a pytest class

    SCALES: tuple[int, ...] = (600,)
    MAX_SIZE: int = 1000
    NMS: float = 0.3
    SVM: bool = False
    BBOX_REG: bool = True
    HAS_RPN: bool = False
    PROPOSAL_METHOD: str = "selective_search"
    RPN_NMS_THRESH: float = 0.7
    RPN_PRE_NMS_TOP_N: int = 6000
    RPN_POST_NMS_TOP_N: int = 300
    RPN_MIN_SIZE: int = 16
    # frcnn-trt: test_net.py's ``thresh`` (scores > this are kept) and ``max_per_image``.
    SCORE_THRESH: float = 0.05
    MAX_PER_IMAGE: int = 100

    def __post_init__(self) -> None:
        _check(self, "TEST.")


@dataclass(frozen=True)
class ModelConfig:
    """frcnn-trt: the network and its anchors (prototxt ``param_str`` values in py-faster-rcnn)."""

    NET: str = "VGG16"
    ANCHOR_SCALES: tuple[float, ...] = (8.0, 16.0, 32.0)
    ANCHOR_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
    FEAT_STRIDE: int = 16
    #: frcnn-trt: the RoI feature op of the Fast R-CNN head: ``RoIPool`` (py-faster-rcnn's Caffe max pooling,
    #: the default) or ``RoIAlign`` (torchvision's bilinear op, exported as the standard ONNX ``RoiAlign``)
    ROI_OP: str = "RoIPool"
    #: frcnn-trt: RoIAlign's bilinear samples per bin side (torchvision's Faster R-CNN uses 2); 0 = adaptive,
    #: ``ceil(RoI side / pooled side)`` as in torchvision (``-1``) and ONNX (``0``). Unused by RoIPool.
    ROI_ALIGN_SAMPLING_RATIO: int = 2

    def __post_init__(self) -> None:
        _check(self, "MODEL.")


#: the values of ``MODEL.ROI_OP`` (frcnn_trt.model.faster_rcnn builds the op)
ROI_OPS = ("RoIPool", "RoIAlign")


@dataclass(frozen=True)
class SolverConfig:
    """frcnn-trt: the Caffe solver prototxt (docs/REFERENCE.md §8; ``stage*_solver*.pt`` / ``solver.prototxt``)."""

    BASE_LR: float = 0.001
    LR_POLICY: str = "step"
    GAMMA: float = 0.1
    STEPSIZE: int = 50000
    MAX_ITERS: int = 70000
    MOMENTUM: float = 0.9
    WEIGHT_DECAY: float = 0.0005
    ITER_SIZE: int = 1
    BIAS_LR_MULT: float = 2.0
    BIAS_DECAY: bool = True
    # Caffe's update v = m*v + lr*(g + wd*w); w -= v. Off: torch.optim.SGD (v = m*v + g; w -= lr*v).
    CAFFE_MOMENTUM: bool = False
    DISPLAY: int = 20
    # Under torchrun: multiply BASE_LR (and the alt-opt BASE_LRS) by the number of processes (linear scaling
    # for the W-times larger global batch). Off: the configured rate is used as it is (both are logged).
    SCALE_LR_WITH_WORLD_SIZE: bool = False

    def __post_init__(self) -> None:
        _check(self, "SOLVER.")


@dataclass(frozen=True)
class AltOptConfig:
    """frcnn-trt: the four-stage schedule of ``tools/train_faster_rcnn_alt_opt.py`` (docs/REFERENCE.md §9).

    Order of the 4-tuples: stage-1 RPN, stage-1 Fast R-CNN, stage-2 RPN, stage-2 Fast R-CNN.
    """

    ITERS: tuple[int, int, int, int] = (80000, 40000, 80000, 40000)
    STEPSIZES: tuple[int, int, int, int] = (60000, 30000, 60000, 30000)
    BASE_LRS: Floats4 = (0.001, 0.001, 0.001, 0.001)
    RPN_IMS_PER_BATCH: int = 1
    FAST_RCNN_IMS_PER_BATCH: int = 2

    def __post_init__(self) -> None:
        _check(self, "ALT_OPT.")


@dataclass(frozen=True)
class Config:
    """The whole configuration tree (py-faster-rcnn's ``cfg``)."""

    TRAIN: TrainConfig = field(default_factory=TrainConfig)
    TEST: TestConfig = field(default_factory=TestConfig)
    MODEL: ModelConfig = field(default_factory=ModelConfig)
    SOLVER: SolverConfig = field(default_factory=SolverConfig)
    ALT_OPT: AltOptConfig = field(default_factory=AltOptConfig)
    DEDUP_BOXES: float = 1.0 / 16.0
    PIXEL_MEANS: tuple[float, float, float] = (102.9801, 115.9465, 122.7717)
    RNG_SEED: int = 3
    EPS: float = 1e-14
    ROOT_DIR: str = ""
    DATA_DIR: str = "data"
    MODELS_DIR: str = ""
    MATLAB: str = "matlab"
    EXP_DIR: str = "default"
    USE_GPU_NMS: bool = True
    GPU_ID: int = 0
    # frcnn-trt: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    DEVICE: str = "auto"
    # frcnn-trt: mixed precision (autocast) for training on a GPU.
    AMP: bool = False
    # frcnn-trt: the decoded-pixel budget of one image (width × height), in training and detection: a larger
    # image is refused from its header, before any decoding.
    MAX_IMAGE_PIXELS: int = 64_000_000

    def __post_init__(self) -> None:
        _check(self, "")
        _config_cross_checks(self)

# --------------------------------------------------------------------------------------------------
# The table: every key's type and range. Sizes are pixels; a side above 2**16 px is refused (no image or
# blob of that size fits a detector's memory); counts of RoIs / proposals stay below 2**31.

#: ``MODEL.NET`` values (frcnn_trt.model.backbones.NETWORKS builds them; names in any case)
NETS = ("VGG16", "ZF", "VGG_CNN_M_1024", "tiny", "ResNet50_C4")
#: ``SOLVER.LR_POLICY`` values (frcnn_trt.train.solver implements them)
LR_POLICIES = ("step", "fixed")

_SIDE = Int(1, 1 << 16)  # an image side or a scale, in pixels
_UNIT = Float(0.0, 1.0)  # an IoU, a threshold or a fraction
_TOP_N = Int(-1, (1 << 31) - 1)  # ≤ 0: no cap (docs/REFERENCE.md §5)
_COUNT = Int(1, (1 << 31) - 1)
_ITERS = Int(0, (1 << 40))
_LR = Float(0.0)
_WEIGHTS4 = Seq(Float(0.0), length=4)
_NAME = Text(pattern=r"[A-Za-z0-9_.\-]+", meaning="a name of letters, digits, '_', '.' and '-'")

RULES: dict[str, Rule] = {
    # TRAIN (docs/REFERENCE.md §1, §4, §6)
    "TRAIN.SCALES": Seq(_SIDE, max_len=64),
    "TRAIN.MAX_SIZE": _SIDE,
    "TRAIN.IMS_PER_BATCH": Int(1, 4096),
    "TRAIN.BATCH_SIZE": _COUNT,
    "TRAIN.FG_FRACTION": _UNIT,
    "TRAIN.FG_THRESH": _UNIT,
    "TRAIN.BG_THRESH_HI": _UNIT,
    "TRAIN.BG_THRESH_LO": _UNIT,
    "TRAIN.USE_FLIPPED": Bool(),
    "TRAIN.BBOX_REG": Bool(),
    "TRAIN.BBOX_THRESH": _UNIT,
    "TRAIN.SNAPSHOT_ITERS": _ITERS,  # 0: only the final snapshot
    "TRAIN.SNAPSHOT_INFIX": Text(max_len=255),
    "TRAIN.USE_PREFETCH": Bool(),
    "TRAIN.BBOX_NORMALIZE_TARGETS": Bool(),
    "TRAIN.BBOX_INSIDE_WEIGHTS": _WEIGHTS4,
    "TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED": Bool(),
    "TRAIN.BBOX_NORMALIZE_MEANS": Seq(Float(), length=4),
    "TRAIN.BBOX_NORMALIZE_STDS": Seq(Float(0.0, lo_open=True), length=4),
    "TRAIN.PROPOSAL_METHOD": _NAME,
    "TRAIN.ASPECT_GROUPING": Bool(),
    "TRAIN.HAS_RPN": Bool(),
    "TRAIN.RPN_POSITIVE_OVERLAP": _UNIT,
    "TRAIN.RPN_NEGATIVE_OVERLAP": _UNIT,
    "TRAIN.RPN_CLOBBER_POSITIVES": Bool(),
    "TRAIN.RPN_FG_FRACTION": _UNIT,
    "TRAIN.RPN_BATCHSIZE": _COUNT,
    "TRAIN.RPN_NMS_THRESH": _UNIT,
    "TRAIN.RPN_PRE_NMS_TOP_N": _TOP_N,
    "TRAIN.RPN_POST_NMS_TOP_N": _TOP_N,
    "TRAIN.RPN_MIN_SIZE": Int(0, 1 << 16),
    "TRAIN.RPN_BBOX_INSIDE_WEIGHTS": _WEIGHTS4,
    # py-faster-rcnn's anchor_target_layer: < 0 uniform weighting, else a fraction strictly inside (0, 1)
    "TRAIN.RPN_POSITIVE_WEIGHT": Float(0.0, 1.0, lo_open=True, hi_open=True, below_zero_means="uniform"),
    "TRAIN.USE_DIFF": Bool(),
    "TRAIN.NUM_WORKERS": Int(0, 256),
    "TRAIN.FEATURE_CACHE_MB": Int(0, 1 << 30),  # 0: off
    "TRAIN.FEATURE_CACHE_UNPADDED": Bool(),
    "TRAIN.VERIFY_IMAGES": Choice(("header", "full"), what="image check"),
    # TEST (docs/REFERENCE.md §1, §11)
    "TEST.SCALES": Seq(_SIDE, max_len=64),
    "TEST.MAX_SIZE": _SIDE,
    "TEST.NMS": _UNIT,
    "TEST.SVM": Bool(),
    "TEST.BBOX_REG": Bool(),
    "TEST.HAS_RPN": Bool(),
    "TEST.PROPOSAL_METHOD": _NAME,
    "TEST.RPN_NMS_THRESH": _UNIT,
    "TEST.RPN_PRE_NMS_TOP_N": _TOP_N,
    "TEST.RPN_POST_NMS_TOP_N": _TOP_N,
    "TEST.RPN_MIN_SIZE": Int(0, 1 << 16),
    "TEST.SCORE_THRESH": _UNIT,
    "TEST.MAX_PER_IMAGE": Int(0, (1 << 31) - 1),  # 0: no cap
    # MODEL (docs/REFERENCE.md §2, §8)
    "MODEL.NET": Choice(NETS, any_case=True, what="network"),
    "MODEL.ANCHOR_SCALES": Seq(Float(0.0, 1 << 16, lo_open=True), max_len=64),
    "MODEL.ANCHOR_RATIOS": Seq(Float(0.0, 1 << 16, lo_open=True), max_len=64),
    "MODEL.FEAT_STRIDE": Int(1, 1 << 10),
    "MODEL.ROI_OP": Choice(ROI_OPS, what="RoI op"),
    "MODEL.ROI_ALIGN_SAMPLING_RATIO": Int(0, 64),  # 0: adaptive
    # SOLVER (docs/REFERENCE.md §8)
    "SOLVER.BASE_LR": _LR,
    "SOLVER.LR_POLICY": Choice(LR_POLICIES, what="learning-rate policy"),
    "SOLVER.GAMMA": Float(0.0, lo_open=True),
    "SOLVER.STEPSIZE": Int(1, 1 << 40),
    "SOLVER.MAX_ITERS": _ITERS,
    "SOLVER.MOMENTUM": Float(0.0, 1.0),
    "SOLVER.WEIGHT_DECAY": Float(0.0),
    "SOLVER.ITER_SIZE": Int(1, 4096),
    "SOLVER.BIAS_LR_MULT": Float(0.0),
    "SOLVER.BIAS_DECAY": Bool(),
    "SOLVER.CAFFE_MOMENTUM": Bool(),
    "SOLVER.DISPLAY": _ITERS,  # 0: every iteration
    "SOLVER.SCALE_LR_WITH_WORLD_SIZE": Bool(),
    # ALT_OPT (docs/REFERENCE.md §9)
    "ALT_OPT.ITERS": Seq(_ITERS, length=4),
    "ALT_OPT.STEPSIZES": Seq(Int(1, 1 << 40), length=4),
    "ALT_OPT.BASE_LRS": Seq(_LR, length=4),
    "ALT_OPT.RPN_IMS_PER_BATCH": Int(1, 4096),
    "ALT_OPT.FAST_RCNN_IMS_PER_BATCH": Int(1, 4096),
    # top level (docs/REFERENCE.md §1)
    "DEDUP_BOXES": Float(0.0, lo_open=True),
    "PIXEL_MEANS": Seq(Float(-1e6, 1e6), length=3),
    "RNG_SEED": Int(0, (1 << 32) - 1),  # np.random.seed's range (py-faster-rcnn seeds numpy with it)
    "EPS": Float(0.0, 1.0, lo_open=True),
    "ROOT_DIR": Text(),
    "DATA_DIR": Text(),
    "MODELS_DIR": Text(),
    "MATLAB": Text(),
    "EXP_DIR": Text(max_len=255, relative_path=True),
    "USE_GPU_NMS": Bool(),
    "GPU_ID": Int(0, 1 << 16),
    "DEVICE": Text(max_len=64, pattern=r"auto|cpu|mps|(cuda|xpu)(:\d{1,4})?",
                   meaning="a device: auto, cpu, cuda, cuda:N, mps, xpu or xpu:N"),
    "AMP": Bool(),
    "MAX_IMAGE_PIXELS": Int(1, 1 << 40),
}


def _check(section: Any, prefix: str) -> None:
    check_section(section, RULES, prefix, [f.name for f in dataclasses.fields(section)])


def _train_cross_checks(t: TrainConfig) -> None:
    """Keys of TRAIN that only make sense together (docs/REFERENCE.md §6)."""
    if t.BG_THRESH_LO > t.BG_THRESH_HI:
        raise ConfigError(f"TRAIN.BG_THRESH_LO {t.BG_THRESH_LO} must be <= TRAIN.BG_THRESH_HI {t.BG_THRESH_HI} "
                          "(background RoIs have LO <= IoU < HI)")
    if t.IMS_PER_BATCH > t.BATCH_SIZE:
        raise ConfigError(f"TRAIN.BATCH_SIZE {t.BATCH_SIZE} must be >= TRAIN.IMS_PER_BATCH {t.IMS_PER_BATCH} "
                          "(BATCH_SIZE RoIs are shared by the images of a batch)")


def _config_cross_checks(c: Config) -> None:
    """Keys of different sections that only make sense together."""
    n = c.ALT_OPT.FAST_RCNN_IMS_PER_BATCH
    if c.ALT_OPT.RPN_IMS_PER_BATCH > c.TRAIN.BATCH_SIZE:
        raise ConfigError(f"ALT_OPT.RPN_IMS_PER_BATCH {c.ALT_OPT.RPN_IMS_PER_BATCH} must be <= TRAIN.BATCH_SIZE "
                          f"{c.TRAIN.BATCH_SIZE} (it becomes TRAIN.IMS_PER_BATCH in the RPN stages)")
    if c.TRAIN.BATCH_SIZE % n:
        raise ConfigError(f"TRAIN.BATCH_SIZE {c.TRAIN.BATCH_SIZE} must be a multiple of "
                          f"ALT_OPT.FAST_RCNN_IMS_PER_BATCH {n} (py-faster-rcnn's minibatch assert: every image "
                          "of a Fast R-CNN batch gets BATCH_SIZE / images RoIs)")
