"""`mmbert bench` end to end on the tiny preset (slow: builds 3 models per workload).

Checks the outputs exist and hang together (tokens, FLOP counts, targets table), never timings.
"""

import json

import pytest

from mmbert.cli import main


@pytest.mark.slow
def test_bench_quick_tiny_writes_json_table_and_chart(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--preset", "tiny", "--out", str(out), "--runs", "1",
                 "--workload", "mixed", "train", "--dtype", "fp32", "bf16", "--force"]) == 0
    res = json.loads((out / "results.json").read_text())
    mixed = res["entries"]["mixed/fp32"]
    assert {c["model"] for c in mixed["cases"]} == {"mmbert", "hf-modernbert", "hf-xlmr"}
    ours = next(c for c in mixed["cases"] if c["model"] == "mmbert")
    hf = next(c for c in mixed["cases"] if c["model"] == "hf-modernbert")
    assert ours["tokens"] == hf["tokens"] and ours["useful_flops"] == hf["useful_flops"] > 0
    train = res["entries"]["train/fp32"]["cases"]
    assert [c["model"] for c in train] == ["mmbert", "hf-modernbert"]
    # --force runs bf16 even where it is slow: inference in bf16 weights, training under autocast
    assert len(res["entries"]["mixed/bf16"]["cases"]) == 3
    assert len(res["entries"]["train/bf16"]["cases"]) == 2
    table = (out / "results.md").read_text()
    assert "| mixed fp32: ours / transformers ModernBERT |" in table
    assert (out / "bench.png").stat().st_size > 1000
    # a second invocation adds to the same results
    assert main(["bench", "--quick", "--preset", "tiny", "--out", str(out), "--runs", "1",
                 "--workload", "fixed", "--dtype", "fp32", "--models", "mmbert"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {"mixed/fp32", "train/fp32", "fixed/fp32"} <= set(res["entries"])
    capsys.readouterr()


def test_bench_rejects_bad_arguments(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path), "--runs", "0", "--quick"]) == 2
    assert "--runs 0" in capsys.readouterr().err


def test_bench_mfu_and_compiled_training_case(tmp_path, capsys, monkeypatch):
    """`--peak-tflops` gives every case MFU = useful FLOP/s / peak; `mmbert-compiled` times our
    training step through torch.compile (replaced by a spy here: compiling costs minutes on a
    CPU), warmed up on the timed batch, and adds the compile / eager target row."""
    import torch

    from mmbert import bench

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or m)
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--preset", "tiny", "--out", str(out), "--runs", "1",
                 "--workload", "train", "--dtype", "fp32", "--threads", "1",
                 "--models", "mmbert", "mmbert-compiled", "--peak-tflops", "0.5"]) == 0
    entry = json.loads((out / "results.json").read_text())["entries"]["train/fp32"]
    assert entry["spec_peak_flops_per_s"] == 0.5e12
    cases = {c["model"]: c for c in entry["cases"]}
    assert set(cases) == {"mmbert", "mmbert-compiled"} and len(compiled) == 1
    for c in cases.values():
        assert c["mfu"] == pytest.approx(c["useful_flops_per_s"] / 0.5e12)
    assert cases["mmbert-compiled"]["tokens"] == cases["mmbert"]["tokens"]
    assert "torch.compile" in cases["mmbert-compiled"]["layout"]
    table = (out / "results.md").read_text()
    assert "MFU (of 0.5 TFLOP/s) |" in table
    row = next(r for r in bench.targets(json.loads((out / "results.json").read_text()))
               if "torch.compile" in r[0])
    assert row[1] == pytest.approx(cases["mmbert-compiled"]["tokens_per_s"]
                                   / cases["mmbert"]["tokens_per_s"])
    capsys.readouterr()


def test_bench_gpu_only_options_fail_in_one_line_without_a_gpu(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, msg in [
        (["--device", "cuda"], "--device cuda: CUDA is not available on this machine"),
        (["--device", "cpu", "--models", "hf-modernbert-fa2"],
         "--models hf-modernbert-fa2: flash-attention-2 runs on CUDA only"),
        (["--peak-tflops", "0"], "--peak-tflops 0.0: expected a positive number"),
    ]:
        assert main(["bench", "--quick", "--out", str(tmp_path / "b"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {msg}") and err.count("\n") == 1, err
    assert not (tmp_path / "b").exists()


def test_targets_list_flash_attention_and_compile_rows_only_when_measured():
    from mmbert.bench import targets

    def entry(w, rates):
        return {"workload": w, "dtype": "bf16",
                "cases": [{"case": w, "model": m, "tokens_per_s": r} for m, r in rates.items()]}

    rows = {r[0]: r for r in targets({"entries": {}})}
    assert not [d for d in rows if "flash-attention-2" in d or "torch.compile" in d]
    results = {"entries": {
        "mixed/bf16": entry("mixed", {"mmbert": 300.0, "hf-modernbert": 100.0,
                                      "hf-modernbert-fa2": 200.0}),
        "train/bf16": entry("train", {"mmbert": 100.0, "mmbert-compiled": 125.0,
                                      "hf-modernbert-fa2": 120.0})}}
    rows = {r[0]: r for r in targets(results)}
    assert rows["mixed bf16: ours / transformers ModernBERT flash-attention-2"][1:] == \
        (1.5, 1.0, True)
    assert rows["train bf16: ours / transformers ModernBERT flash-attention-2"][1:] == \
        (100 / 120, 1.0, False)
    assert rows["train bf16: ours torch.compile / ours eager (speed-up)"][1:] == (1.25, 1.0, True)
    assert "fixed bf16: ours / transformers ModernBERT flash-attention-2" not in rows
