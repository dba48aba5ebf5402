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
