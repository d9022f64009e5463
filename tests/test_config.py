from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from frcnn_trt import config as C
from frcnn_trt.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # a link to frcnn_trt/configs


def test_defaults_match_py_faster_rcnn() -> None:
    cfg = C.Config()
    t, s = cfg.TRAIN, cfg.TEST
    assert (t.SCALES, t.MAX_SIZE, t.IMS_PER_BATCH, t.BATCH_SIZE) == ((600,), 1000, 2, 128)
    assert (t.FG_FRACTION, t.FG_THRESH, t.BG_THRESH_HI, t.BG_THRESH_LO) == (0.25, 0.5, 0.5, 0.1)
    assert (t.RPN_POSITIVE_OVERLAP, t.RPN_NEGATIVE_OVERLAP, t.RPN_FG_FRACTION, t.RPN_BATCHSIZE) == (0.7, 0.3, 0.5, 256)
    assert (t.RPN_PRE_NMS_TOP_N, t.RPN_POST_NMS_TOP_N, t.RPN_NMS_THRESH, t.RPN_MIN_SIZE) == (12000, 2000, 0.7, 16)
    assert (s.RPN_PRE_NMS_TOP_N, s.RPN_POST_NMS_TOP_N, s.NMS) == (6000, 300, 0.3)
    assert t.BBOX_NORMALIZE_STDS == (0.1, 0.1, 0.2, 0.2)
    assert t.BBOX_NORMALIZE_TARGETS_PRECOMPUTED is False and t.HAS_RPN is False
    assert cfg.PIXEL_MEANS == (102.9801, 115.9465, 122.7717)
    assert cfg.RNG_SEED == 3 and cfg.EPS == 1e-14 and cfg.DEDUP_BOXES == 1 / 16
    assert cfg.ALT_OPT.ITERS == (80000, 40000, 80000, 40000)


def test_py_faster_rcnn_yml_files_load_unchanged() -> None:
    alt = C.load(CONFIGS / "faster_rcnn_alt_opt.yml")
    assert alt.EXP_DIR == "faster_rcnn_alt_opt" and alt.TRAIN.BG_THRESH_LO == 0.0 and alt.TEST.HAS_RPN
    e2e = C.load(CONFIGS / "faster_rcnn_end2end.yml")
    assert e2e.TRAIN.HAS_RPN and e2e.TRAIN.IMS_PER_BATCH == 1
    assert e2e.TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED and e2e.TRAIN.PROPOSAL_METHOD == "gt"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = C.load(path)
    assert isinstance(cfg.MODEL.NET, str)


def test_pixel_means_nested_form_and_roundtrip(tmp_path: Path) -> None:
    cfg = C.from_dict({"PIXEL_MEANS": [[[1, 2, 3]]], "TRAIN": {"SCALES": [480, 576]}})
    assert cfg.PIXEL_MEANS == (1.0, 2.0, 3.0) and cfg.TRAIN.SCALES == (480, 576)
    path = C.write_resolved(cfg, tmp_path)
    again = C.load(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["TRAIN"]["SCALES"] == [480, 576]


def test_set_overrides_like_cfg_from_list() -> None:
    cfg = C.from_list(["TRAIN.SCALES", "[400,500]", "RNG_SEED", "7", "TEST.HAS_RPN", "True", "EXP_DIR", "foo"])
    assert cfg.TRAIN.SCALES == (400, 500) and cfg.RNG_SEED == 7 and cfg.TEST.HAS_RPN is True
    assert cfg.EXP_DIR == "foo"
    assert C.from_list(["TRAIN.SCALES", "(600,)"]).TRAIN.SCALES == (600,)
    assert C.from_list(["TRAIN.FG_THRESH", "1"]).TRAIN.FG_THRESH == 1.0


def test_unknown_key_suggests_close_match() -> None:
    with pytest.raises(ConfigError, match=r"TRAIN\.RPN_POSITVE_OVERLAP.*did you mean TRAIN\.RPN_POSITIVE_OVERLAP"):
        C.from_list(["TRAIN.RPN_POSITVE_OVERLAP", "0.6"])
    with pytest.raises(ConfigError, match="did you mean TRAIN"):
        C.from_dict({"TRIAN": {"SCALES": [600]}})


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["TRAIN.IMS_PER_BATCH", "1.5"], "TRAIN.IMS_PER_BATCH: expected an integer"),
        (["TRAIN.USE_FLIPPED", "maybe"], "TRAIN.USE_FLIPPED: expected true/false"),
        (["TRAIN.FG_THRESH", "high"], "TRAIN.FG_THRESH: expected a number"),
        (["TRAIN.BBOX_NORMALIZE_STDS", "[0.1, 0.2]"], "expected 4 values"),
        (["TRAIN", "3"], "TRAIN: expected a mapping"),
        (["TRAIN.SCALES"], "odd number"),
    ],
)
def test_bad_values_name_the_key(pairs: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        C.from_list(pairs)


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("TRAIN: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yml: config file is not valid YAML \(line 2"):
        C.load(bad)
    wrong = tmp_path / "wrong.yml"
    wrong.write_text("TRAIN:\n  SCALE: [600]\n")
    with pytest.raises(ConfigError, match=r"wrong\.yml: unknown config key TRAIN\.SCALE; did you mean TRAIN\.SCALES"):
        C.load(wrong)
    with pytest.raises(ConfigError, match=r"missing\.yml: config file not found"):
        C.load(tmp_path / "missing.yml")


def test_override_derives_without_mutation() -> None:
    base = C.Config()
    stage = C.override(base, TRAIN={"HAS_RPN": True, "IMS_PER_BATCH": 1})
    assert stage.TRAIN.HAS_RPN and stage.TRAIN.IMS_PER_BATCH == 1
    assert base.TRAIN.HAS_RPN is False and base.TRAIN.IMS_PER_BATCH == 2
    with pytest.raises(AttributeError):
        base.TRAIN.HAS_RPN = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SOLVER.BASE_LR", "1e400", r"SOLVER\.BASE_LR: expected a finite number, got inf"),
        ("TEST.NMS", ".nan", r"TEST\.NMS: expected a finite number, got nan"),
        ("TEST.NMS", "-1", r"TEST\.NMS must be ≥ 0, got -1"),
        ("TRAIN.RPN_BATCHSIZE", "0", r"TRAIN\.RPN_BATCHSIZE must be ≥ 1, got 0"),
        ("TRAIN.IMS_PER_BATCH", "0", r"TRAIN\.IMS_PER_BATCH must be ≥ 1, got 0"),
        ("TRAIN.SCALES", "[0]", r"TRAIN\.SCALES\[0\] must be ≥ 1, got 0"),
        ("TRAIN.SCALES", "[]", r"TRAIN\.SCALES: expected 1 to 64 values, got 0"),
        ("TRAIN.MAX_SIZE", "0", r"TRAIN\.MAX_SIZE must be ≥ 1"),
        ("RNG_SEED", ".nan", r"RNG_SEED: expected a finite number, got nan"),
        ("RNG_SEED", ".inf", r"RNG_SEED: expected a finite number, got inf"),
        ("RNG_SEED", "9" * 400, r"RNG_SEED: 9999.* is out of range"),
        ("RNG_SEED", "9" * 5000, r"RNG_SEED: expected an integer"),
        ("RNG_SEED", "4294967296", r"RNG_SEED must be ≤ 4294967295"),
        ("TRAIN.BATCH_SIZE", "2.5", r"TRAIN\.BATCH_SIZE: expected an integer, got 2\.5"),
        ("PIXEL_MEANS", "[1, 2, .nan]", r"PIXEL_MEANS\[2\]: expected a finite number"),
        ("TRAIN.BBOX_NORMALIZE_STDS", "[0.1, 0.1, 0, 0.2]", r"BBOX_NORMALIZE_STDS\[2\] must be > 0"),
        ("MODEL.NET", "VGG17", r"MODEL\.NET: unknown network 'VGG17' \(did you mean VGG16\?\)"),
        ("SOLVER.LR_POLICY", "poly", r"SOLVER\.LR_POLICY: unknown learning-rate policy 'poly'"),
        ("DEVICE", "gpu", r"DEVICE: 'gpu' is not a device"),
        ("EXP_DIR", "../elsewhere", r"EXP_DIR: '\.\./elsewhere' must be a relative folder name"),
        ("TRAIN.RPN_POSITIVE_WEIGHT", "1.0", r"RPN_POSITIVE_WEIGHT must be < 1"),
        ("TRAIN.BG_THRESH_LO", "0.6", r"TRAIN\.BG_THRESH_LO 0\.6 must be <= TRAIN\.BG_THRESH_HI 0\.5"),
        ("TRAIN.BATCH_SIZE", "127", r"TRAIN\.BATCH_SIZE 127 must be a multiple of ALT_OPT\.FAST_RCNN_IMS_PER_BATCH 2"),
        ("TRAIN.SCALES", "[" * 5000, r"--set TRAIN\.SCALES: the value nests deeper than 64 levels"),
        ("TRAIN.SNAPSHOT_INFIX", "a\x00b", r"SNAPSHOT_INFIX: 'a\\x00b' holds a NUL byte"),
    ],
)
def test_every_key_is_range_checked(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        C.from_list([key, value])


def test_sentinels_and_any_case_names_still_load() -> None:
    cfg = C.from_list(["TRAIN.RPN_POSITIVE_WEIGHT", "-1", "MODEL.NET", "vgg16", "TEST.RPN_PRE_NMS_TOP_N", "-1",
                       "TEST.MAX_PER_IMAGE", "0", "RNG_SEED", "4294967295", "DEVICE", "cuda:1"])
    assert cfg.TRAIN.RPN_POSITIVE_WEIGHT == -1.0 and cfg.MODEL.NET == "vgg16" and cfg.RNG_SEED == 2**32 - 1


def test_rules_table_covers_every_key_and_matches_the_networks() -> None:
    from frcnn_trt.model.backbones import NETWORKS

    keys = {f"{prefix}{name}" for prefix, section in (("TRAIN.", C.TrainConfig), ("TEST.", C.TestConfig),
                                                       ("MODEL.", C.ModelConfig), ("SOLVER.", C.SolverConfig),
                                                       ("ALT_OPT.", C.AltOptConfig))
            for name in section.__dataclass_fields__}
    keys |= {k for k in C.Config.__dataclass_fields__ if k not in ("TRAIN", "TEST", "MODEL", "SOLVER", "ALT_OPT")}
    assert keys == set(C.RULES)
    assert set(C.NETS) == set(NETWORKS)


def test_sections_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"TRAIN\.FG_THRESH must be ≤ 1, got 2\.0"):
        C.TrainConfig(FG_THRESH=2.0)
    assert C.TrainConfig(SCALES=[600]).SCALES == (600,)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xef\xbb\xbfTRAIN:\n  SCALES: [500]\n", None),
        (b"TRAIN:\n  SCALES: [\xff]\n", r"bom\.yml: config file is not valid UTF-8 text \(line 2"),
        (b"- 1\n- 2\n", r"bom\.yml: config: expected a mapping"),
        (b"[]\n", r"bom\.yml: config: expected a mapping"),
        (b"a: " + b"[" * 200 + b"]" * 200 + b"\n", r"bom\.yml: config file (nests deeper|cannot be read)"),
        (b"x: &a [1, 2]\nTRAIN:\n  SCALES: *a\n", r"bom\.yml: unknown config key x"),
        (b"TRAIN:\n  SCALES: &a [600]\nTEST:\n  SCALES: *a\n", None),
        (b"TRAIN: null\n", r"bom\.yml: TRAIN: expected a mapping"),
    ],
)
def test_yaml_faults_name_the_file(tmp_path: Path, content: bytes, message: str | None) -> None:
    path = tmp_path / "bom.yml"
    path.write_bytes(content)
    if message is None:
        assert C.load(path).TRAIN.SCALES in ((500,), (600,))
    else:
        with pytest.raises(ConfigError, match=message):
            C.load(path)


def test_a_fifo_config_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.yml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"pipe\.yml: config file must be a regular file, this is a FIFO"):
        C.load(fifo)
