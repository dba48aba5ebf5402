"""Damaged files are found before use: one error line naming the file (exit code 2), or, for
training checkpoints, a fall-back to the newest intact one with one line naming the skipped one.

Damage kinds: ``truncate`` (the second half cut off), ``flip`` (one byte inverted), ``delete``.
File kinds: token shards (``.bin``, ``.idx``, ``manifest.json``), training checkpoints (every file
the manifest lists, and the manifest) and model directories (``model.safetensors``, a shard of
an index, ``config.json``) under check / convert / merge / finetune / eval.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mmbert import MaskedLM, ModelConfig
from mmbert.cli import main as cli_main
from mmbert.data.shards import CHECKSUM_FIELDS, Manifest, ShardSet, verify_shards
from mmbert.errors import MmbertError
from mmbert.train import checkpoint as ckpt
from test_train import data, recipe_dict  # noqa: F401 (fixture)

DAMAGES = ("truncate", "flip", "delete")


def damage(f: Path, how: str, at: int | None = None) -> None:
    """Cut ``f`` in half, invert the byte at ``at`` (default: the middle), or delete it."""
    if how == "delete":
        f.unlink()
        return
    b = bytearray(f.read_bytes())
    if how == "truncate":
        f.write_bytes(bytes(b[: len(b) // 2]))
    else:
        b[len(b) // 2 if at is None else at] ^= 0xFF
        f.write_bytes(bytes(b))


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def one_error(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one ``error:`` line on stderr; the line."""
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, (rc, err)
    return err


# ---------------------------------------------------------------------------------------------
# Token shards
# ---------------------------------------------------------------------------------------------

@pytest.fixture()
def shards(demo_shards, tmp_path) -> Path:
    d = tmp_path / "shards"
    shutil.copytree(demo_shards, d)
    return d


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", ["bin", "idx", "manifest"])
def test_damaged_shard_file_is_named(shards, kind, how, capsys):
    lang = "fra_Latn"
    f = shards / ({"bin": f"train/{lang}.bin", "idx": f"train/{lang}.idx"}.get(kind)
                  or "manifest.json")
    damage(f, how, at=0 if kind == "manifest" else None)  # '{' of the manifest: not JSON
    before = snapshot(shards)
    err = one_error(capsys, ["data", "verify", str(shards), "--fix-checksums"])
    assert str(f) in err, err
    assert {"truncate": "truncated", "delete": "missing"}.get(how, "") in err \
        or kind == "manifest"
    # the quick check on open finds all of it but a changed byte inside the .bin
    if kind == "bin" and how == "flip":
        ShardSet(shards).check()
    else:
        with pytest.raises(MmbertError) as e:
            ShardSet(shards).check()
        assert str(f) in str(e.value) and "\n" not in str(e.value)
    assert snapshot(shards) == before  # nothing written


def test_manifest_without_checksums_loads_and_fix_adds_them(shards, capsys):
    """A manifest from before checksums: read and quick-checked as before; `data verify`
    says so; --fix-checksums writes back exactly what `prepare` records now."""
    original = (shards / "manifest.json").read_bytes()
    m = json.loads(original)
    for e in m["languages"].values():
        for sp in e["splits"].values():
            assert all(k in sp for k in CHECKSUM_FIELDS)
            for k in CHECKSUM_FIELDS:
                del sp[k]
    (shards / "manifest.json").write_text(json.dumps(m, indent=2))
    ShardSet(shards).check()
    assert cli_main(["data", "verify", str(shards)]) == 0
    assert "no checksum" in capsys.readouterr().out
    r = verify_shards(shards, fix=True)
    assert r.added == r.unchecked == r.files > 0
    assert (shards / "manifest.json").read_bytes() == original
    assert verify_shards(shards).unchecked == 0
    assert Manifest.read(shards).languages["fra_Latn"].splits["train"].has_checksums


def test_pretrain_refuses_damaged_shards_before_starting(data, tmp_path):  # noqa: F811
    from mmbert.recipe import recipe_from_dict
    from mmbert.train import pretrain

    d = tmp_path / "shards"
    shutil.copytree(data["shards"], d)
    lang = sorted(Manifest.read(d).languages)[0]
    damage(d / "train" / f"{lang}.idx", "flip", at=9)
    rec = recipe_from_dict(recipe_dict(dict(data, shards=d)), "r.yaml")
    with pytest.raises(MmbertError, match=rf"{d}/train/{lang}\.idx: fails its sha256 check"):
        pretrain(rec, tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Training checkpoints: verify before use, resume and export fall back to the newest intact one
# ---------------------------------------------------------------------------------------------

CKPT_FILES = ("model/model.safetensors", "model/config.json", "optimizer.safetensors",
              "optimizer.json", "trainer.json", "rank-00000.json", "manifest.json")


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> tuple[Path, dict]:  # noqa: F811
    """A finished one-phase run with checkpoints at steps 2 and 4 (the phase end)."""
    from mmbert.recipe import recipe_from_dict
    from mmbert.train import pretrain

    d = recipe_dict(data)
    d["phases"] = d["phases"][:1]
    d["phases"][0]["tokens"] = 2048
    d["checkpoint"] = {"every_steps": 2, "keep_last": 5}
    r = tmp_path_factory.mktemp("ck") / "run"
    pretrain(recipe_from_dict(d, "r.yaml"), r, log=lambda m: None)
    assert [p.name for p in ckpt.list_checkpoints(r / "checkpoints")] == [
        "step-00000002", "step-00000004"]
    return r, d


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("rel", CKPT_FILES)
def test_damaged_checkpoint_file_is_found_by_verify(run, tmp_path, rel, how):
    c = tmp_path / "step-00000004"
    shutil.copytree(run[0] / "checkpoints" / c.name, c)
    damage(c / rel, how)
    with pytest.raises(MmbertError) as e:
        ckpt.verify(c)
    msg = str(e.value)
    assert str(c) in msg and rel in msg and "\n" not in msg
    with pytest.raises(MmbertError):
        ckpt.read_checkpoint(c)


@pytest.mark.parametrize("how", DAMAGES)
def test_resume_and_export_fall_back_to_the_newest_intact_checkpoint(run, tmp_path, how,
                                                                     capsys):
    from mmbert.recipe import recipe_from_dict
    from mmbert.train import pretrain

    src, d = run
    r = tmp_path / "run"
    shutil.copytree(src, r)
    bad = r / "checkpoints" / "step-00000004"
    damage(bad / "optimizer.safetensors", how)
    # export RUN: the step-2 checkpoint, saying which one it skipped and why
    assert cli_main(["export", str(r), str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out.splitlines()
    skipped = [line for line in out if str(bad) in line]
    assert len(skipped) == 1 and "falling back" in skipped[0], out
    assert out[-1] == f"wrote {tmp_path / 'hf'} from {r / 'checkpoints' / 'step-00000002'}"
    # an explicit damaged checkpoint is refused, nothing written
    assert "optimizer.safetensors" in one_error(capsys, ["export", str(bad),
                                                         str(tmp_path / "hf2")])
    assert not (tmp_path / "hf2").exists()
    # pretrain --resume: one line naming the skipped checkpoint, then resumes from step 2
    said: list[str] = []
    res = pretrain(recipe_from_dict(d, "r.yaml"), r, resume=True, log=said.append)
    assert len([m for m in said if "step-00000004" in m]) == 1, said
    line = next(m for m in said if "step-00000004" in m)
    assert "optimizer.safetensors" in line and "falling back" in line
    assert any("resumed" in m and "step-00000002" in m for m in said), said
    assert res.phases[0].step == 4
    ckpt.verify(r / "checkpoints" / "step-00000004")  # rewritten intact


# ---------------------------------------------------------------------------------------------
# Model directories
# ---------------------------------------------------------------------------------------------

CFG = ModelConfig(vocab_size=4096, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=2, local_attention=4, max_position_embeddings=64)
# damaged file -> how; model.safetensors is flipped at byte 9, inside its JSON header
MODEL_DAMAGES = [("model.safetensors", "truncate"), ("model.safetensors", "flip"),
                 ("model.safetensors", "delete"), ("config.json", "truncate"),
                 ("config.json", "flip"), ("config.json", "delete"),
                 ("shard-2.safetensors", "delete"), ("shard-2.safetensors", "truncate")]


def _model_dir(root: Path, name: str, sharded: bool, tokenizer: Path) -> Path:
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    d = root / name
    MaskedLM(CFG).save_pretrained(d)
    shutil.copyfile(tokenizer / "tokenizer.json", d / "tokenizer.json")
    if sharded:  # two shards and an index in place of model.safetensors
        sd = load_file(str(d / "model.safetensors"))
        names = sorted(sd)
        half = {"shard-1.safetensors": names[: len(names) // 2],
                "shard-2.safetensors": names[len(names) // 2:]}
        for f, keys in half.items():
            save_file({k: sd[k] for k in keys}, str(d / f), metadata={"format": "pt"})
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {k: f for f, keys in half.items() for k in keys}}))
        (d / "model.safetensors").unlink()
    return d


def _commands(d: Path, good: Path, t: Path, tokenizer: Path) -> dict[str, list[str]]:
    train = t / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"a b c {i}", "label": i % 2}) + "\n"
                             for i in range(8)))
    return {
        "check": ["check", str(d)],
        "convert": ["convert", str(d), "--out", str(t / "o")],
        "merge": ["merge", "--method", "linear", "--models", str(good), str(d),
                  "--out", str(t / "o")],
        "finetune": ["finetune", "--task", "sequence", "--model", str(d), "--train", str(train),
                     "--out", str(t / "o"), "--tokenizer", str(tokenizer / "tokenizer.json"),
                     "--epochs", "1"],
        "eval": ["eval", str(d), "--corpus", str(t), "--out", str(t / "o"),
                 "--tokenizer", str(tokenizer / "tokenizer.json")],
    }


@pytest.mark.parametrize("command", ["check", "convert", "merge", "finetune", "eval"])
@pytest.mark.parametrize("name,how", MODEL_DAMAGES, ids=[f"{n}-{h}" for n, h in MODEL_DAMAGES])
def test_damaged_model_directory_is_one_line(demo_tokenizer, tmp_path, capsys, name, how,
                                             command):
    sharded = name.startswith("shard-")
    d = _model_dir(tmp_path, "m", sharded, demo_tokenizer)
    good = _model_dir(tmp_path, "good", False, demo_tokenizer)
    damage(d / name, how, at=9 if name == "model.safetensors" else 0)
    argv = _commands(d, good, tmp_path, demo_tokenizer)[command]
    err = one_error(capsys, argv)
    assert str(d) in err and name in err, err
    assert not (tmp_path / "o").exists()
