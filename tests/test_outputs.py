"""Output directories and JSON files (mmbert.outputs): the one --out rule, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmbert.cli import main
from mmbert.config import ModelConfig
from mmbert.errors import MmbertError
from mmbert.model import MaskedLM
from mmbert.outputs import OutputDir, atomic_file, read_json, read_jsonl, write_json


def _refusal(d: Path) -> str:
    return (f"{d}: exists and is not empty; expected a new or empty directory, or --overwrite "
            "to replace it")


def _leftovers(d: Path) -> list[Path]:
    return [p for p in d.parent.iterdir() if p.name.startswith(f".{d.name}.")]


def _old_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    return out


def _write(out: Path, **kw) -> None:
    with OutputDir(out, **kw) as tmp:
        (tmp / "new.txt").write_text("new")


@pytest.mark.parametrize("empty", [False, True])
def test_missing_or_empty_dir_is_written(tmp_path, empty):
    out = tmp_path / "a" / "out"
    if empty:
        out.mkdir(parents=True)
    _write(out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert not _leftovers(out)


def test_non_empty_dir_refused_in_one_line_and_left_alone(tmp_path):
    out = _old_dir(tmp_path)
    with pytest.raises(MmbertError) as e:
        _write(out)
    assert str(e.value) == _refusal(out)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert not _leftovers(out)


def test_overwrite_replaces_non_empty_dir(tmp_path):
    out = _old_dir(tmp_path)
    _write(out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert not _leftovers(out)


def test_overwrite_swaps_in_one_step_on_linux(tmp_path, monkeypatch):
    """With --overwrite, the new directory and the old one trade places atomically: no moment
    without an output (the old one is never renamed aside)."""
    import sys

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    renames: list[tuple[Path, Path]] = []
    real = Path.rename
    monkeypatch.setattr(Path, "rename", lambda self, t: renames.append((self, t)) or real(self, t))
    with OutputDir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old sibling left
    if sys.platform.startswith("linux"):
        assert renames == []  # renameat2(RENAME_EXCHANGE), not rename-away + rename-in


@pytest.mark.parametrize("exists", [False, True])
def test_failure_mid_write_keeps_old_contents_and_no_temp(tmp_path, exists):
    out = _old_dir(tmp_path) if exists else tmp_path / "out"
    with pytest.raises(RuntimeError):
        with OutputDir(out, overwrite=True) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert ([p.name for p in out.iterdir()] == ["old.txt"]) if exists else not out.exists()
    assert not _leftovers(out)


def test_file_at_out_refused(tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    for overwrite in (False, True):
        with pytest.raises(MmbertError, match="exists and is not a directory") as e:
            _write(out, overwrite=overwrite)
        assert "\n" not in str(e.value)
    assert out.read_text() == "a file" and not _leftovers(out)


def test_json_round_trip_and_one_line_errors(tmp_path):
    obj = {"name": "çà", "n": [1, 2.5, None], "nested": {"ok": True}}
    p = write_json(tmp_path / "sub" / "x.json", obj)
    assert read_json(p, "a test object") == obj
    text = p.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "çà" in text and '\n  "n"' in text
    assert not _leftovers(p)
    p.write_text(text[: len(text) // 2], encoding="utf-8")  # truncated
    with pytest.raises(MmbertError) as e:
        read_json(p, "a test object")
    msg = str(e.value)
    assert msg.startswith(f"{p}: not valid JSON") and msg.endswith("expected a test object")
    assert "\n" not in msg
    with pytest.raises(MmbertError, match="no such file; expected a test object"):
        read_json(tmp_path / "nope.json", "a test object")
    p.write_text("[1, 2]")
    with pytest.raises(MmbertError, match="not a JSON object"):
        read_json(p, "a test object")


def test_atomic_file_failure_leaves_target(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(p) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert p.read_text() == "old" and not _leftovers(p)


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo', encoding="utf-8")
    assert read_jsonl(p) == [{"step": 1}, {"step": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


# ---------------------------------------------------------------------------------------------
# the rule through the CLI: merge and export-onnx into a non-empty directory
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, local_attention=8, max_position_embeddings=64)
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        d = root / f"m{seed}"
        MaskedLM(cfg).save_pretrained(d)
        dirs.append(d)
    return dirs


def _cli_refused_then_overwritten(args: list[str], out: Path, made: str, capsys) -> None:
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"error: {_refusal(out)}\n"
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not _leftovers(out)
    assert main([*args, "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert made in names and "keep.txt" not in names and not _leftovers(out)


def test_cli_merge_refuses_non_empty_out_then_overwrites(tiny_models, tmp_path, capsys):
    out = tmp_path / "merged"
    args = ["merge", "--method", "linear", "--models", *map(str, tiny_models), "--out", str(out)]
    _cli_refused_then_overwritten(args, out, "model.safetensors", capsys)
    assert json.loads((out / "merge.json").read_text())["method"] == "linear"


def test_cli_export_onnx_refuses_non_empty_out_then_overwrites(tiny_models, tmp_path, capsys):
    out = tmp_path / "onnx"
    args = ["export-onnx", str(tiny_models[0]), "--out", str(out), "--no-check"]
    _cli_refused_then_overwritten(args, out, "model.onnx", capsys)
