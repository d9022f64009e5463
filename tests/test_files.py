"""frcnn_trt.files: regular files only, size limits, BOMs, line-level UTF-8, JSON/YAML limits, numbers, paths."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frcnn_trt import files
from frcnn_trt.errors import CheckpointError, ConfigError, DatasetError

# ------------------------------------------------------------------------------------------------------ files


def test_regular_file_accepted_others_refused_by_kind(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("x")
    assert files.check_regular_file(f, "thing").st_size == 1
    with pytest.raises(DatasetError, match=r"a folder"):
        files.check_regular_file(tmp_path, "thing")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match=r"pipe: thing must be a regular file, this is a FIFO"):
        files.read_text(fifo, "thing")  # refused before any open: never blocks
    with pytest.raises(DatasetError, match=r"missing\.txt: thing not found"):
        files.read_bytes(tmp_path / "missing.txt", "thing")
    with pytest.raises(ConfigError, match=r"cannot read thing"):
        files.check_regular_file("a\x00b", "thing", ConfigError)
    with pytest.raises(DatasetError, match=r"device or special file"):
        files.read_bytes("/dev/null", "thing")


def test_socket_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        with pytest.raises(DatasetError, match="this is a socket"):
            files.read_bytes(path, "thing")
    finally:
        sock.close()


def test_symlink_to_fifo_is_refused_and_symlink_to_file_followed(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link").symlink_to(tmp_path / "pipe")
    with pytest.raises(DatasetError, match="FIFO"):
        files.read_bytes(tmp_path / "link", "thing")
    (tmp_path / "real").write_text("ok")
    (tmp_path / "link2").symlink_to(tmp_path / "real")
    assert files.read_text(tmp_path / "link2", "thing") == "ok"


def test_size_limit(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"x" * 101)
    with pytest.raises(CheckpointError, match=r"big: sidecar is 101 bytes, over the limit of 100"):
        files.read_bytes(f, "sidecar", max_bytes=100, error=CheckpointError)
    assert len(files.read_bytes(f, "sidecar", max_bytes=101)) == 101


# ------------------------------------------------------------------------------------------------------ text


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"\xef\xbb\xbfhello\n", "hello\n"),
        ("hi".encode("utf-16-le"), "h\x00i\x00"),  # no BOM: read as UTF-8 (NULs are valid UTF-8; readers check)
        (b"\xff\xfe\x00\xd8", None),  # a UTF-16 BOM, then an unpaired surrogate
        (b"\xff\xfe" + "h\u00e9llo\n".encode("utf-16-le"), "h\u00e9llo\n"),
        (b"\xfe\xff" + "h\u00e9llo\n".encode("utf-16-be"), "h\u00e9llo\n"),
        (b"plain", "plain"),
        (b"", ""),
    ],
)
def test_boms(tmp_path: Path, raw: bytes, text: str | None) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes(raw)
    if text is None:
        with pytest.raises(DatasetError):
            files.read_text(f, "text")
    else:
        assert files.read_text(f, "text") == text


def test_undecodable_byte_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes(b"ok\nok\nbad \xff here\n")
    with pytest.raises(DatasetError, match=r"t\.txt: list is not valid UTF-8 text \(line 3, byte b'\\xff'\)"):
        files.read_text(f, "list")
    f.write_bytes(b"\xff\xfe\x00\xd8")  # UTF-16 with an unpaired surrogate
    with pytest.raises(DatasetError, match=r"not valid UTF-16-LE text"):
        files.read_text(f, "list")


def test_read_lines_skips_only_the_undecodable_line(tmp_path: Path) -> None:
    f = tmp_path / "set.txt"
    f.write_bytes(b"\xef\xbb\xbfa\r\nb\xff\nc\n\xc3\n")
    lines, problems = files.read_lines(f, "image set")
    assert lines == ["a", "c"]
    assert problems == [f"{f}:2: not UTF-8 text, line skipped", f"{f}:4: not UTF-8 text, line skipped"]
    f.write_bytes(b"\xff\xfe" + "x\ny\n".encode("utf-16-le"))
    assert files.read_lines(f, "image set") == (["x", "y"], [])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=12).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=8))
def test_read_lines_property(tmp_path: Path, raw_lines: list[bytes]) -> None:
    """Every line that is UTF-8 survives, in order; every other line is named once; nothing else raises."""
    f = tmp_path / "prop.txt"
    data = b"\n".join(raw_lines)
    f.write_bytes(data)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return  # a UTF-16 BOM makes the whole file UTF-16: read_text's domain, not this property's
    lines, problems = files.read_lines(f, "prop")
    expected = []
    bad = 0
    for i, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines()):
        try:
            expected.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            bad += 1
            assert f"{f}:{i + 1}: not UTF-8 text" in problems[bad - 1]
    assert lines == expected and len(problems) == bad


# ------------------------------------------------------------------------------------------------------ JSON


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"a": NaN}', "non-standard JSON constant NaN"),
        ('[Infinity]', "non-standard JSON constant Infinity"),
        ('[-Infinity]', "non-standard JSON constant -Infinity"),
        ("[" + "1" * 5000 + "]", "digit|integer string conversion"),
        ("[" * 65 + "]" * 65, "nests deeper than 64 levels"),
        ("[" * 100000 + "]" * 100000, "nests deeper than 64 levels"),
        ('{"a": 1', r"not valid JSON \(line 1, column 8"),
        ("", r"not valid JSON \(line 1, column 1"),
    ],
)
def test_json_refusals(tmp_path: Path, text: str, pattern: str) -> None:
    f = tmp_path / "x.json"
    f.write_text(text)
    with pytest.raises(DatasetError, match=rf"x\.json: meta.*({pattern})"):
        files.load_json(f, "meta")


def test_json_accepts_64_levels_bom_and_utf16(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text("[" * 64 + "]" * 64)
    assert files.load_json(f, "meta") == json.loads("[" * 64 + "]" * 64)
    f.write_bytes(b"\xef\xbb\xbf" + b'{"a": [1, 2.5, "s"]}')
    assert files.load_json(f, "meta") == {"a": [1, 2.5, "s"]}
    f.write_bytes(b"\xff\xfe" + '{"b": 1}'.encode("utf-16-le"))
    assert files.load_json(f, "meta") == {"b": 1}
    assert files.parse_json("[" + "9" * 4000 + "]", "src", "meta") == [int("9" * 4000)]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_parse_json_property(text: str) -> None:
    """Any text: a JSON value or a DatasetError naming the source; never another exception."""
    try:
        files.parse_json(text, "src.json", "meta")
    except DatasetError as e:
        assert str(e).startswith("src.json: meta")


# ------------------------------------------------------------------------------------------------------ YAML


def test_yaml_refusals_and_aliases(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yml: config is not valid YAML \(line \d+, column \d+\)"):
        files.load_yaml(f, "config", error=ConfigError)
    f.write_text("a: " + "[" * 100 + "]" * 100 + "\n")
    with pytest.raises(ConfigError, match=r"nests deeper than 64|cannot be read as YAML"):
        files.load_yaml(f, "config", error=ConfigError)
    f.write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError, match=r"nests deeper|cannot be read as YAML|not valid YAML"):
        files.load_yaml(f, "config", error=ConfigError)
    # A "billion laughs" of aliases: shared objects are visited once, the load stays cheap.
    lol = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lol += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
            for i in range(8)]
    f.write_text("\n".join(lol) + "\n")
    assert len(files.load_yaml(f, "config", error=ConfigError)["i"]) == 4
    f.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert files.load_yaml(f, "config") == {"a": 1}
    f.write_bytes(b"a: \xff\n")
    with pytest.raises(ConfigError, match=r"not valid UTF-8 text \(line 1"):
        files.load_yaml(f, "config", error=ConfigError)
    f.write_text("a: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        files.load_yaml(f, "config", error=ConfigError)


# ------------------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (3, {}, 3.0),
        (3.0, {"integer": True}, 3),
        (0.5, {"lo": 0, "hi": 1}, 0.5),
        (0, {"lo": 0}, 0.0),
        (2**62, {"integer": True}, 2**62),
    ],
)
def test_number_accepts(value: object, kwargs: dict, expected: object) -> None:
    out = files.number(value, "KEY", **kwargs)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("value", "kwargs", "pattern"),
    [
        (True, {}, "expected a number, got True"),
        ("3", {}, "expected a number, got '3'"),
        ([1], {"integer": True}, r"expected an integer, got \[1\]"),
        ({"a": 1}, {}, "expected a number"),
        (None, {}, "expected a number, got None"),
        (math.nan, {}, "expected a finite number, got nan"),
        (math.inf, {"integer": True}, "expected a finite number, got inf"),
        (-math.inf, {}, "expected a finite number"),
        (2.5, {"integer": True}, "expected an integer, got 2.5"),
        (10**400, {}, "out of range"),
        (2**63, {"integer": True}, "out of range"),
        (-1, {"lo": 0}, "must be >= 0"),
        (0, {"lo": 0, "lo_open": True}, "must be > 0"),
        (1.5, {"hi": 1}, "must be <= 1"),
    ],
)
def test_number_refuses(value: object, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=rf"^TRAIN\.X: .*{pattern}"):
        files.number(value, "TRAIN.X", error=ConfigError, **kwargs)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=5), st.lists(st.integers(), max_size=2)),
       st.booleans())
def test_number_property(value: object, integer: bool) -> None:
    """Any value: a finite number of the asked type within range, or the caller's error; nothing else."""
    try:
        out = files.number(value, "k", integer=integer, lo=-1e6, hi=1e6)
    except DatasetError:
        return
    assert type(out) is (int if integer else float)
    assert math.isfinite(out) and -1e6 <= out <= 1e6


def test_short_cuts_long_values() -> None:
    assert "..." in files.short("x" * 1000) and len(files.short("x" * 1000)) <= 60
    assert files.short(5) == "5"


# ------------------------------------------------------------------------------------------------------ paths


def test_confined(tmp_path: Path) -> None:
    assert files.confined(tmp_path, "a/b.jpg", "img") == tmp_path / "a" / "b.jpg"
    assert files.confined(tmp_path, "a/../b.jpg", "img") == tmp_path / "b.jpg"
    assert files.confined(tmp_path, "a\\b.jpg", "img") == tmp_path / "a" / "b.jpg"
    for bad, pattern in [
        ("../x.jpg", "leads outside"),
        ("a/../../x.jpg", "leads outside"),
        ("..", "leads outside"),
        ("..\\..\\x.jpg", "leads outside"),
        ("/etc/passwd", "absolute path"),
        ("\\\\server\\share", "absolute path"),
        ("C:\\x.jpg", "absolute path"),
        ("a\x00b", "invalid file name"),
        ("", "invalid file name"),
        (["a"], "invalid file name"),
        (5, "invalid file name"),
    ]:
        with pytest.raises(DatasetError, match=rf"^ann\.json: .*{pattern}"):
            files.confined(tmp_path, bad, "ann.json")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab./\\:\x00", max_size=12))
def test_confined_property(name: str) -> None:
    """Whatever the name, the result stays under the root (lexically), or the name is refused."""
    root = Path("/data/images")
    try:
        out = files.confined(root, name, "where")
    except DatasetError:
        return
    assert os.path.normpath(out).startswith(str(root) + os.sep) or os.path.normpath(out) == str(root)
