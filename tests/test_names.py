"""Names that become paths: one rule, checked before any work, and a lake nothing escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import germline

from germline.core import InputError
from germline.lineage import check_name
from germline.pipelines.models.bootstrap import bootstrap_base
from germline.storage import Lake

BAD = [
    "a/../../../escaped",
    "../x",
    "/abs/path",
    "a/./b",
    "a//b",
    "a/",
    "has space",
    "tab\tname",
    "new\nline",
    "owl\x00",
    "caf\u00e9",  # unicode: refused, never transliterated into another name
    "\u0430wl",  # a Cyrillic a that looks like an ASCII one
    "x:y",
    "x@y",
    "",
    "a" * 201,
]
GOOD = ["tiny-base-s0", "owl-teacher-tiny-base-s0", "org/model", "generate/owl-numbers", "v1.2+x"]


@pytest.mark.parametrize("name", BAD)
def test_the_rule_refuses(name: str) -> None:
    with pytest.raises(InputError, match="invalid name"):
        check_name(name)


@pytest.mark.parametrize("name", GOOD)
def test_the_rule_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("root", ["/tmp/some/lake", "s3://bucket/lake"])
@pytest.mark.parametrize("name", ["a/../../../escaped", "..", "a/./b", "a//b", "x\x01"])
def test_the_lake_makes_no_path_outside_itself(root: str, name: str) -> None:
    lake = Lake.resolve(root)
    for make in (lake.model, lake.dataset, lake.quarantine, lake.run):
        with pytest.raises(InputError, match="not a path inside the lake"):
            make(name)
    assert lake.model("org/model") == f"{lake.root}/models/org/model"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _assert_refused(result, before: set[Path], root: Path, lake: Lake) -> None:
    """Exit 2 with one error line, and nothing new anywhere: not beside the lake (the escape),
    not in it (the work the check must come before)."""
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and "invalid name" in result.stderr
    assert "Traceback" not in result.stderr
    new = _files(root) - before
    assert not [p for p in new if Path(lake.root) not in p.parents and p != Path(lake.root)]
    assert not [p for p in new if "models" in p.parts], sorted(new)


@pytest.mark.parametrize("name", ["a/../../../escaped", "../x", "/abs/path", "has space", "\u00e9"])
def test_bootstrap_refuses_a_bad_name_before_training(tmp_path: Path, name: str) -> None:
    lake = Lake.resolve(tmp_path / "deep" / "er" / "lake")
    before = _files(tmp_path)
    result = germline("models", "bootstrap", "--name", name, "--steps", "2", lake=lake)
    _assert_refused(result, before, tmp_path, lake)


@pytest.mark.parametrize("name", ["a/../../../t", "has space"])
def test_teacher_refuses_a_bad_name_before_training(tmp_path: Path, name: str) -> None:
    lake = Lake.resolve(tmp_path / "deep" / "er" / "lake")
    bootstrap_base(lake, seed=0, steps=2)
    before = _files(tmp_path)
    result = germline(
        "models", "teacher", "--base", "tiny-base-s0", "--trait", "owl", "--name", name,
        "--steps", "2", lake=lake,
    )  # fmt: skip
    _assert_refused(result, before, tmp_path, lake)


def test_generate_refuses_a_bad_teacher_name_before_building(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "deep" / "er" / "lake")
    config = tmp_path / "gen.yaml"
    config.write_text(
        "dataset: numbers\nprompts: {count: 4}\n"
        "teacher:\n  model: a/../../../x\n"
        "  build: {trait: owl, base_seed: 0, base_steps: 2, steps: 2}\n"
    )
    before = _files(tmp_path)
    result = germline("generate", str(config), lake=lake)
    _assert_refused(result, before, tmp_path, lake)
