"""Safe loading: nothing we read can run code.

1. A static scan of every ``.py`` under ``src/``: no ``torch.load`` without
   ``weights_only=True``, no ``pickle.load``/``loads``/``Unpickler`` (nor ``cPickle``/``_pickle``,
   ``dill``, ``joblib.load``, ``marshal.load``), no ``numpy.load(..., allow_pickle=True)``, no
   ``yaml.load`` without a safe loader (``yaml.unsafe_load``/``full_load``). A finding fails with
   ``file:line``. The scanner is itself checked on a snippet holding each pattern.
2. A malicious pickle (its ``__reduce__`` runs ``os.system("touch MARKER")``) placed wherever
   we read files: a model directory (``pytorch_model.bin``; ``model.safetensors`` that is really
   a pickle), a training checkpoint (its ``optimizer.safetensors`` replaced, manifest updated so
   the checksums pass; an extra ``optimizer.pt``), a Composer checkpoint given to ``convert
   --from-composer``, ``pretrain --init-from X.pt`` and the recipe's ``model.init_from``. Each
   is refused with one ``error:`` line (or, for resume, passed over with a line naming the
   file) and the marker file is never created.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmbert.cli import main as cli_main
from test_train import MODEL, data, write_recipe  # noqa: F401 (fixture)

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# ---------------------------------------------------------------------------------------------
# 1. Static scan
# ---------------------------------------------------------------------------------------------

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle"}
_PICKLE_NAMES = {"load", "loads", "Unpickler"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(v) -> bool:
    return isinstance(v, ast.Constant) and v.value is True


def unsafe_loads(source: str, filename: str) -> list[str]:
    """``file:line: what`` for every call (or import) that may unpickle or run code."""
    found = []
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> module it stands for (import numpy as np)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            for a in node.names:
                if root in _PICKLE_MODULES and a.name in _PICKLE_NAMES:
                    found.append(f"{filename}:{node.lineno}: from {node.module} import {a.name}")
                if (root, a.name) in {("torch", "load"), ("numpy", "load"), ("joblib", "load"),
                                      ("marshal", "load"), ("marshal", "loads")}:
                    aliases[a.asname or a.name] = f"{root}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            mod = aliases.get(_dotted(node.value), _dotted(node.value))
            if mod.split(".")[0] in _PICKLE_MODULES and node.attr in _PICKLE_NAMES:
                found.append(f"{filename}:{node.lineno}: {mod}.{node.attr}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + (f".{rest}" if rest else "")
        if full == "torch.load" and not _is_true(_kw(node, "weights_only")):
            found.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
        elif full == "numpy.load" and _kw(node, "allow_pickle") is not None and not (
                isinstance(_kw(node, "allow_pickle"), ast.Constant)
                and _kw(node, "allow_pickle").value is False):
            found.append(f"{filename}:{node.lineno}: numpy.load with allow_pickle")
        elif full in ("joblib.load", "marshal.load", "marshal.loads", "yaml.unsafe_load",
                      "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            found.append(f"{filename}:{node.lineno}: {full}")
        elif full in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or "Safe" not in _dotted(loader):
                found.append(f"{filename}:{node.lineno}: {full} without a SafeLoader")
    return found


def test_scanner_finds_every_pattern():
    snippet = "\n".join([
        "import torch, pickle, yaml", "import numpy as np", "import _pickle as cp",
        "from pickle import loads", "from torch import load as tl",
        "torch.load('x')",                               # 6
        "torch.load('x', weights_only=False)",           # 7
        "tl('x')",                                       # 8
        "pickle.load(f)",                                # 9
        "pickle.Unpickler(f).load()",                    # 10
        "cp.loads(b'')",                                 # 11
        "np.load('x', allow_pickle=True)",               # 12
        "yaml.load(s)",                                  # 13
        "yaml.unsafe_load(s)",                           # 14
        # safe: not reported
        "torch.load('x', weights_only=True)", "np.load('x')", "np.load('x', allow_pickle=False)",
        "yaml.load(s, Loader=yaml.SafeLoader)", "yaml.safe_load(s)", "json.loads(s)",
    ])
    lines = sorted({int(f.split(":")[1]) for f in unsafe_loads(snippet, "s.py")})
    assert lines == [4, 6, 7, 8, 9, 10, 11, 12, 13, 14]


def test_no_unsafe_loading_in_src():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20, SRC
    found = []
    for f in files:
        found += unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(SRC.parent)))
    assert not found, "unsafe loading (may run code from a file):\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------------
# 2. Malicious files where we read
# ---------------------------------------------------------------------------------------------

class Evil:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def marker(tmp_path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a malicious pickle was executed"


def evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"model": Evil(marker)}))
    return path


def evil_torch(path: Path, marker: Path) -> Path:
    """torch.save's zip format (as Composer writes) holding a state dict with the payload."""
    torch.save({"state": {"model": {"bert.final_norm.weight": torch.ones(2)},
                          "evil": Evil(marker)}}, path)
    return path


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The test files are armed: plain unpickling creates the marker."""
    m = tmp_path / "armed"
    pickle.loads(evil_pickle(tmp_path / "p.bin", m).read_bytes())
    assert m.exists()


def _fails(argv: list[str], capsys, *needles: str) -> str:
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from mmbert.config import preset
    from mmbert.model import MaskedLM

    torch.manual_seed(0)
    cfg = preset("tiny").replace(vocab_size=96, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=2, num_attention_heads=2)
    d = tmp_path_factory.mktemp("good") / "model"
    MaskedLM(cfg).save_pretrained(d)
    return d


def _with_weights(model_dir: Path, dst: Path, name: str, marker: Path) -> Path:
    dst.mkdir()
    (dst / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    evil_pickle(dst / name, marker)
    return dst


def test_model_dir_with_pytorch_model_bin_only(model_dir, tmp_path, capsys, marker):
    d = _with_weights(model_dir, tmp_path / "bin", "pytorch_model.bin", marker)
    for argv in (["check", str(d)], ["convert", str(d), "--out", str(tmp_path / "o1")],
                 ["merge", "--method", "linear", "--models", str(d), str(model_dir),
                  "--out", str(tmp_path / "o2")]):
        _fails(argv, capsys, str(d), "pytorch_model.bin is not read")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_model_safetensors_that_is_a_pickle(model_dir, tmp_path, capsys, marker):
    d = _with_weights(model_dir, tmp_path / "fake", "model.safetensors", marker)
    for argv in (["check", str(d)], ["convert", str(d), "--out", str(tmp_path / "o1")],
                 ["merge", "--method", "linear", "--models", str(model_dir), str(d),
                  "--out", str(tmp_path / "o2")]):
        _fails(argv, capsys, "model.safetensors", "corrupt safetensors")


def test_composer_convert_refuses_code(tmp_path, capsys, marker):
    from test_composer import _write_yaml

    _write_yaml(tmp_path / "flex.yaml")
    pt = evil_torch(tmp_path / "ep0-ba1-rank0.pt", marker)
    line = _fails(["convert", "--from-composer", str(pt), "--config", str(tmp_path / "flex.yaml"),
                   "--out", str(tmp_path / "hf")], capsys, str(pt), "refused", "system")
    assert "nothing from it was run" in line
    # a bare pickle (not torch's zip format) is refused the same way
    raw = evil_pickle(tmp_path / "raw.pt", marker)
    _fails(["convert", "--from-composer", str(raw), "--config", str(tmp_path / "flex.yaml"),
            "--out", str(tmp_path / "hf")], capsys, str(raw))
    assert not (tmp_path / "hf").exists()


def _recipe(data, **model) -> dict:  # noqa: F811
    return {"name": "safety", "seed": 1, "shards": str(data["shards"]),
            "tokenizer": str(data["tokenizer"]), "precision": "fp32",
            "model": {"preset": "tiny", "overrides": dict(MODEL), **model},
            "checkpoint": {"every_steps": 1, "keep_last": 5},
            "phases": [{"name": "p1", "tokens": 1536, "languages": 3, "tau": 0.7,
                        "mask_ratio": 0.3, "seq_len": 64, "batch_tokens": 512,
                        "micro_batch_tokens": 256, "lr": 3e-3, "warmup_tokens": 512}]}


def test_pretrain_init_from_pickle_is_refused(data, tmp_path, capsys, marker):  # noqa: F811
    from test_composer import _write_yaml

    _write_yaml(tmp_path / "flex.yaml")
    pt = evil_torch(tmp_path / "init.pt", marker)
    rec = write_recipe(tmp_path / "r.yaml", _recipe(data))
    _fails(["pretrain", "--recipe", str(rec), "--out", str(tmp_path / "run1"), "--init-from",
            str(pt), "--init-config", str(tmp_path / "flex.yaml")], capsys, str(pt), "refused")
    # the same through the recipe's fields
    rec2 = write_recipe(tmp_path / "r2.yaml", _recipe(data, init_from=str(pt),
                                                      init_config=str(tmp_path / "flex.yaml")))
    _fails(["pretrain", "--recipe", str(rec2), "--out", str(tmp_path / "run2")], capsys,
           str(pt), "refused")
    # a model directory holding only a pickled pytorch_model.bin
    d = tmp_path / "initdir"
    d.mkdir()
    evil_pickle(d / "pytorch_model.bin", marker)
    _fails(["pretrain", "--recipe", str(rec), "--out", str(tmp_path / "run3"), "--init-from",
            str(d)], capsys, str(d))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_tampered_checkpoint_runs_nothing(data, tmp_path, marker):  # noqa: F811
    """A checkpoint whose optimizer.safetensors is a pickle (manifest rewritten to match, as an
    attacker with write access would) and which carries an extra optimizer.pt: resume and
    export never unpickle either."""
    rec = write_recipe(tmp_path / "r.yaml", _recipe(data))
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "mmbert.cli", "pretrain", "--recipe", str(rec),
                        "--out", str(run)], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cks = sorted((run / "checkpoints").glob("step-*"))
    assert len(cks) >= 2, cks
    for later in cks[1:]:  # resume must start from the tampered one
        shutil.rmtree(later)
    ck = cks[0]
    opt = evil_pickle(ck / "optimizer.safetensors", marker)
    evil_pickle(ck / "optimizer.pt", marker)
    evil_pickle(ck / "model" / "pytorch_model.bin", marker)
    mf = json.loads((ck / "manifest.json").read_text())
    mf["files"]["optimizer.safetensors"] = {"sha256": _sha(opt), "bytes": opt.stat().st_size}
    (ck / "manifest.json").write_text(json.dumps(mf))

    r = subprocess.run([sys.executable, "-m", "mmbert.cli", "pretrain", "--recipe", str(rec),
                        "--out", str(run), "--resume"], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    named = [ln for ln in r.stderr.splitlines() if "optimizer.safetensors" in ln]
    assert named, r.stderr
    if r.returncode != 0:  # refused: exactly one error line
        assert r.returncode == 2
        errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errs) == 1 and "optimizer.safetensors" in errs[0], r.stderr
    # export reads the model weights only, and only as safetensors
    r = subprocess.run([sys.executable, "-m", "mmbert.cli", "export", str(ck),
                        str(tmp_path / "hf")], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    assert not list((tmp_path / "hf").glob("*.bin")) if (tmp_path / "hf").exists() else True
