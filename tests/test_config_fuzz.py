"""Property tests: any YAML file or ``--set`` value is a valid config or a ConfigError naming the key/file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frcnn_trt import config as C
from frcnn_trt.errors import ConfigError

KEYS = sorted(C.RULES)
_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
            | st.sampled_from(["600", "1e400", ".nan", "-.inf", "9" * 400, "[600]", "(1,2,3)", "cuda:0", "VGG16"]))
_VALUES = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=6), c,
                                                                                         max_size=3), max_leaves=10)


def _nested(key: str, value: object) -> dict[str, object]:
    head, _, rest = key.partition(".")
    return {head: {rest: value}} if rest else {head: value}


@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(KEYS), value=_VALUES)
def test_from_dict_values_are_valid_or_name_the_key(key: str, value: object) -> None:
    try:
        C.from_dict(_nested(key, value))
    except ConfigError as exc:
        name = key.rsplit(".", 1)[-1]
        assert name in str(exc) or "BATCH_SIZE" in str(exc) or "BG_THRESH" in str(exc), str(exc)


@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(KEYS) | st.text(max_size=20), text=st.text(max_size=40) | st.sampled_from(
    ["[" * 100, "9" * 5000, "1e999", "{a: [1, *b]}", "!!python/object:os.system 'ls'", "&a [*a]", "nan", "'\x00'"]))
def test_set_values_are_valid_or_name_the_key(key: str, text: str) -> None:
    try:
        C.from_list([key, text])
    except ConfigError as exc:
        message = str(exc)
        assert (key.rsplit(".", 1)[-1][:50] in message or message.startswith("--set ") or "BATCH_SIZE" in message
                or "BG_THRESH" in message), message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(KEYS), _VALUES, max_size=4), noise=st.binary(max_size=16))
def test_yaml_files_are_valid_or_name_the_file(tmp_path: Path, doc: dict[str, object], noise: bytes) -> None:
    path = tmp_path / "fuzz.yml"
    nested: dict[str, object] = {}
    for key, value in doc.items():
        head, _, rest = key.partition(".")
        if rest:
            section = nested.setdefault(head, {})
            if isinstance(section, dict):
                section[rest] = value
        else:
            nested[head] = value
    try:
        text = yaml.safe_dump(nested).encode()
    except (yaml.YAMLError, ValueError):
        return
    path.write_bytes(noise + text if noise[:1] in (b"\xef", b"\xff", b"\x00") else text)
    try:
        C.load(path)
    except ConfigError as exc:
        assert "fuzz.yml" in str(exc)


@pytest.mark.parametrize("name", sorted(p.name for p in C.CONFIG_DIR.glob("*.yml")))
def test_every_shipped_config_loads_unchanged(name: str) -> None:
    cfg = C.load(C.CONFIG_DIR / name)
    assert C.from_dict(C.to_dict(cfg)) == cfg
