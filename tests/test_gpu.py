"""The CUDA path, against the CPU fp32 path and transformers (``make test-gpu``, or
``bash benchmarks/gpu.sh``, which runs these first).

Every test needs a CUDA device and fails (does not skip) without one; ``make test`` deselects
them. The one skip: the NCCL DDP test on a machine with a single GPU. Small random models (6
layers, hidden 256, 4 heads of 64, global attention on layers 0 and 3, sliding window 128 = 64
each side), ~1-2 minutes in all on one GPU (estimated), most of it ``torch.compile``.

Weights are drawn with ``initializer_range=0.1`` (mmBERT's 0.02 makes attention nearly uniform,
so that a sliding window that is wrong, or missing, changes hidden states by less than bf16
rounding does). At these sizes, measured on a CPU with bf16 weights against fp32:

==============================================  =================  ==================
comparison                                      relative error     max |diff| / max
==============================================  =================  ==================
bf16 vs fp32 hidden states (packed, 8192 tok)   0.013              1.6%
bf16 vs fp32 MLM logits (padded)                0.015              2.1%
window vs no window, fp32 (what a bug gives)    0.28 .. 0.38       39 .. 49%
==============================================  =================  ==================

so the bf16 tolerance is ``||got - want|| / ||want|| <= 3e-2`` and ``max |got - want| <= 5%`` of
``max |want|`` (:data:`REL_TOL`, :data:`MAX_TOL`); each test prints what it measured
(``pytest -s``). Losses: relative difference <= 5e-3 (bf16); gradients: relative error <= 5e-2
and cosine >= 0.998 (bf16), or relative error <= 1e-3 (fp32, DDP against one process).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from mmbert import attention as A
from mmbert.bench import TrainBatch, make_train_batch, padded_batch
from mmbert.config import ModelConfig
from mmbert.model import Encoder, MaskedLM

REL_TOL = 3e-2  # ||got - want|| / ||want||, bf16 against fp32
MAX_TOL = 5e-2  # max |got - want| / max |want|
LOSS_TOL = 5e-3  # relative, bf16 against fp32
GRAD_TOL = 5e-2  # relative (norm over all parameters), bf16 against fp32
CONTROL_MIN = 5.0  # a deliberately wrong model must miss the reference by 5x the tolerance
DEV = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.fail(f"no CUDA device: torch {torch.__version__} (CUDA build "
                    f"{torch.version.cuda}) sees no GPU; these tests check the GPU path and need "
                    f"one (`make test` deselects them)", pytrace=False)
    return DEV


def gpu_config(**kw) -> ModelConfig:
    base = dict(vocab_size=1024, hidden_size=256, intermediate_size=384, num_hidden_layers=6,
                num_attention_heads=4, local_attention=128, max_position_embeddings=8192,
                initializer_range=0.1)
    base.update(kw)
    return ModelConfig(**base)


def errors(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(relative error of the whole tensor, max |diff| / max |want|), in float64 on the CPU."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    diff = got - want
    return float(diff.norm() / want.norm()), float(diff.abs().max() / want.abs().max())


def check_bf16(name: str, got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """Assert bf16 ``got`` matches fp32 ``want`` within the tolerances; print the errors."""
    assert got.shape == want.shape, (name, got.shape, want.shape)
    rel, mx = errors(got, want)
    print(f"\n[gpu] {name}: relative error {rel:.2e} (tol {REL_TOL:.0e}), max |diff| "
          f"{100 * mx:.2f}% of max (tol {100 * MAX_TOL:.0f}%)")
    assert rel <= REL_TOL and mx <= MAX_TOL, f"{name}: relative {rel:.3e}, max {mx:.3e}"
    return rel, mx


def check_control(name: str, wrong: torch.Tensor, want: torch.Tensor) -> None:
    """The tolerance must tell a wrong model apart: ``wrong`` misses by far more."""
    rel, mx = errors(wrong, want)
    print(f"[gpu] control, {name}: relative error {rel:.2e}, max {100 * mx:.1f}%")
    assert rel >= CONTROL_MIN * REL_TOL, f"control {name} is within {rel:.3e}: test too weak"


def cpu_and_cuda(cfg: ModelConfig, seed: int) -> tuple[Encoder, Encoder]:
    """The same random weights: fp32 on the CPU and bf16 on CUDA, both in eval mode."""
    torch.manual_seed(seed)
    ref = Encoder(cfg).eval()
    gpu = Encoder(cfg, init=False)
    gpu.load_state_dict(ref.state_dict())
    return ref, gpu.to(device=DEV, dtype=torch.bfloat16).eval()


def packed(lengths: list[int], vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    return torch.randint(5, vocab, (int(cu[-1]),), generator=g), cu


def without_windows(model: Encoder) -> Encoder:
    """The same weights with every layer global: what a sliding window that is ignored gives."""
    wide = Encoder(model.config.replace(local_attention=2 * model.config.max_position_embeddings),
                   init=False)
    wide.load_state_dict(model.state_dict())
    return wide.eval()


# ---------------------------------------------------------------------------------------------
# Encoder: CUDA bf16 against CPU fp32
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_encoder_cuda_bf16_matches_cpu_fp32_packed_and_padded():
    cfg = gpu_config()
    ref, gpu = cpu_and_cuda(cfg, seed=0)
    # packed: sequences shorter than, around and far beyond the window (64 each side)
    ids, cu = packed([300, 17, 513, 1, 64, 200], cfg.vocab_size, seed=1)
    with torch.no_grad():
        want = ref(ids, cu_seqlens=cu).last_hidden_state
        got = gpu(ids.to(DEV), cu_seqlens=cu.to(DEV)).last_hidden_state
    check_bf16("encoder, packed 6 sequences (1..513 tokens)", got, want)

    # padded: an ordinary right-padded batch with an attention mask (unpadded inside)
    ids, mask = padded_batch([250, 130, 7, 400], cfg.vocab_size, cfg.pad_token_id, seed=2)
    with torch.no_grad():
        want = ref(ids, attention_mask=mask).last_hidden_state
        got = gpu(ids.to(DEV), attention_mask=mask.to(DEV)).last_hidden_state
    real = mask.bool()
    check_bf16("encoder, padded 4 x 400 with mask", got[real.to(DEV)], want[real])
    assert bool((got[~real.to(DEV)] == 0).all()), "padding positions must stay zero"


@pytest.mark.gpu
def test_encoder_cuda_bf16_sliding_window_8192_tokens():
    """One 8192-token sequence: local layers see 129 of 8192 tokens, global layers all."""
    cfg = gpu_config()
    ref, gpu = cpu_and_cuda(cfg, seed=3)
    ids, cu = packed([8192], cfg.vocab_size, seed=4)
    t = time.perf_counter()
    with torch.no_grad():
        want = ref(ids, cu_seqlens=cu).last_hidden_state
        cpu_s = time.perf_counter() - t
        got = gpu(ids.to(DEV), cu_seqlens=cu.to(DEV)).last_hidden_state
        # the same batch as [1, 8192] without a mask (the padded entry point, no padding)
        got_2d = gpu(ids.to(DEV)[None]).last_hidden_state[0]
        wrong = without_windows(ref)(ids, cu_seqlens=cu).last_hidden_state
    print(f"\n[gpu] CPU fp32 reference at 8192 tokens: {cpu_s:.1f} s")
    check_bf16("encoder, one 8192-token sequence, packed", got, want)
    check_bf16("encoder, one 8192-token sequence, [1, T]", got_2d, want)
    check_control("8192 tokens without sliding windows", wrong, want)


# ---------------------------------------------------------------------------------------------
# Attention backends on CUDA: flash-attn varlen against the SDPA path
# ---------------------------------------------------------------------------------------------

def _attention_grads(q, k, v, plan, window):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = A.varlen_attention(q, k, v, plan, window)
    g = torch.Generator(device="cpu").manual_seed(5)
    out.float().mul(torch.randn(out.shape, generator=g).to(out.device)).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.gpu
def test_flash_attn_varlen_matches_sdpa_path(monkeypatch):
    """Where flash-attn imports, its varlen kernel and our SDPA path (buckets, flat sliding
    window) give the same outputs and gradients on CUDA in bf16, and the fp32 reference; where
    it does not, the SDPA path is what runs on CUDA (and test 1 checks it)."""
    torch.manual_seed(6)
    lengths = [700, 130, 5, 64, 300]
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    q, k, v = (torch.randn(int(cu[-1]), 4, 64) for _ in range(3))
    plan = A.VarlenPlan.build(cu.to(DEV))
    dev = [t.to(DEV).bfloat16() for t in (q, k, v)]
    sdpa_calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy_sdpa(*args, **kw):
        sdpa_calls.append(args[0].device.type)
        return real_sdpa(*args, **kw)

    flash = A.flash_attn_varlen_func
    if flash is None:
        assert not A.flash_available(dev[0])
        monkeypatch.setattr(A.F, "scaled_dot_product_attention", spy_sdpa)
        for window in (None, 64):
            A.varlen_attention(*dev, plan, window)
        assert sdpa_calls and set(sdpa_calls) == {DEV.type}
        print("\n[gpu] flash-attn is not installed: attention ran on the SDPA path "
              f"({len(sdpa_calls)} SDPA calls on CUDA for a global and a local layer); "
              "nothing to compare flash-attn with")
        return
    flash_calls = []
    monkeypatch.setattr(A, "flash_attn_varlen_func",
                        lambda *a, **kw: flash_calls.append(1) or flash(*a, **kw))
    for window in (None, 64):
        flash_calls.clear()
        with_flash = _attention_grads(*dev, plan, window)
        assert len(flash_calls) == 1, "flash-attn must run on CUDA bf16"
        with monkeypatch.context() as m:
            m.setattr(A, "flash_attn_varlen_func", None)
            m.setattr(A.F, "scaled_dot_product_attention", spy_sdpa)
            with_sdpa = _attention_grads(*dev, plan, window)
        assert sdpa_calls, "the SDPA path must run with flash-attn switched off"
        ref = _attention_grads(q.double(), k.double(), v.double(),
                               A.VarlenPlan.build(cu), window)  # CPU fp64, SDPA buckets
        what = "global" if window is None else f"window {window}"
        for name, a, b, r in zip(("out", "dq", "dk", "dv"), with_flash, with_sdpa, ref):
            check_bf16(f"flash-attn vs SDPA, {what}, {name}", a.float(), b.float())
            check_bf16(f"flash-attn vs fp64, {what}, {name}", a.float(), r.float())
    version = getattr(sys.modules.get("flash_attn"), "__version__", "?")
    print(f"[gpu] flash-attn {version}: varlen kernel and SDPA path agree")


# ---------------------------------------------------------------------------------------------
# Masked LM: ours against transformers' ModernBertForMaskedLM (sdpa), same weights
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_masked_lm_matches_transformers_sdpa_cuda_bf16(tmp_path):
    import transformers
    from transformers import ModernBertForMaskedLM

    transformers.logging.set_verbosity_error()
    cfg = gpu_config(local_attention=64)  # 32 each side: every sequence is longer
    torch.manual_seed(7)
    ref = MaskedLM(cfg).eval()
    ref.save_pretrained(tmp_path)  # transformers' layout (mmbert.hf), as test_hf_parity does
    ours = MaskedLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device=DEV).eval()
    theirs = ModernBertForMaskedLM.from_pretrained(tmp_path, attn_implementation="sdpa",
                                                   dtype=torch.bfloat16).to(DEV).eval()
    ids, mask = padded_batch([300, 77, 150], cfg.vocab_size, cfg.pad_token_id, seed=8)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, ::3] = -100
    real = mask.bool()
    d_ids, d_mask, d_labels = ids.to(DEV), mask.to(DEV), labels.to(DEV)
    with torch.no_grad():
        want = ref(ids, attention_mask=mask).logits[real]
        a = ours(d_ids, attention_mask=d_mask).logits[real.to(DEV)]
        b = theirs(input_ids=d_ids, attention_mask=d_mask).logits[real.to(DEV)]
        loss32 = float(ref(ids, attention_mask=mask, labels=labels).loss)
        loss_a = float(ours(d_ids, attention_mask=d_mask, labels=d_labels).loss)
        loss_b = float(theirs(input_ids=d_ids, attention_mask=d_mask, labels=d_labels).loss)
    check_bf16("MLM logits, ours vs transformers (both CUDA bf16)", a.float(), b.float())
    rel_a, _ = check_bf16("MLM logits, ours CUDA bf16 vs CPU fp32", a, want)
    rel_b, _ = check_bf16("MLM logits, transformers CUDA bf16 vs CPU fp32", b, want)
    assert rel_a <= 2 * rel_b + 5e-3, "ours is much less accurate in bf16 than transformers"
    print(f"[gpu] MLM loss: fp32 CPU {loss32:.5f}, ours bf16 {loss_a:.5f}, "
          f"transformers bf16 {loss_b:.5f}")
    for name, loss in (("ours", loss_a), ("transformers", loss_b)):
        assert abs(loss - loss32) <= LOSS_TOL * loss32, (name, loss, loss32)


# ---------------------------------------------------------------------------------------------
# Training step: CUDA bf16 autocast against CPU fp32; torch.compile against eager
# ---------------------------------------------------------------------------------------------

def train_step(model: torch.nn.Module, b: TrainBatch, device: torch.device,
               amp: bool) -> tuple[float, torch.Tensor]:
    """Forward + backward of the masked LM on a packed batch: loss and all gradients (fp64)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss = model(b.ids.to(device), cu_seqlens=b.cu_seqlens.to(device),
                     max_seqlen=b.max_seqlen, labels=b.labels.to(device)).loss
    loss.backward()
    grads = torch.cat([p.grad.detach().double().cpu().flatten()
                       for p in model.parameters()])
    return float(loss.detach()), grads


def check_step(name: str, got: tuple[float, torch.Tensor], want: tuple[float, torch.Tensor],
               loss_tol: float = LOSS_TOL, grad_tol: float = GRAD_TOL) -> None:
    (la, ga), (lb, gb) = got, want
    rel = float((ga - gb).norm() / gb.norm())
    cos = float(F.cosine_similarity(ga, gb, dim=0))
    print(f"\n[gpu] {name}: loss {la:.6f} vs {lb:.6f} (relative {abs(la - lb) / lb:.1e}, tol "
          f"{loss_tol:.0e}); gradients relative {rel:.2e} (tol {grad_tol:.0e}), cosine {cos:.6f}")
    assert abs(la - lb) <= loss_tol * lb, (name, la, lb)
    assert rel <= grad_tol and cos >= 0.998, (name, rel, cos)


def mlm_pair(cfg: ModelConfig, seed: int) -> tuple[MaskedLM, MaskedLM]:
    """The same random weights, fp32, on the CPU and on CUDA (training: fp32 master weights)."""
    torch.manual_seed(seed)
    cpu = MaskedLM(cfg).train()
    gpu = MaskedLM(cfg, init=False)
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.to(DEV).train()


@pytest.mark.gpu
def test_training_step_cuda_bf16_matches_cpu_fp32():
    from mmbert.train.optim import build_optimizer

    cfg = gpu_config()
    batch = make_train_batch(cfg, 4, 512, 32, seed=9)  # packed documents, 30% masked
    cpu, gpu = mlm_pair(cfg, seed=10)
    want = train_step(cpu, batch, CPU, amp=False)
    check_step("MLM step, CUDA bf16 autocast vs CPU fp32", train_step(gpu, batch, DEV, amp=True),
               want)
    before = want[0]
    # one optimizer update (StableAdamW, as the recipes) on both, then the loss again
    for model in (cpu, gpu):
        opt = build_optimizer(model, "stableadamw", 1e-3, (0.9, 0.98), 1e-6, 1e-5)
        opt.step()
    after = train_step(gpu, batch, DEV, amp=True), train_step(cpu, batch, CPU,
                                                              amp=False)
    print(f"[gpu] loss after one StableAdamW step (lr 1e-3): CUDA {after[0][0]:.6f}, CPU "
          f"{after[1][0]:.6f}, before {before:.6f}")
    assert abs(after[0][0] - after[1][0]) <= LOSS_TOL * after[1][0]
    assert after[0][0] < 0.98 * before, "one update on this batch must lower its loss by 2%"


@pytest.mark.gpu
def test_torch_compile_training_step_matches_eager():
    import torch._dynamo

    cfg = gpu_config()
    batch = make_train_batch(cfg, 4, 512, 32, seed=11)
    _, model = mlm_pair(cfg, seed=12)
    eager = train_step(model, batch, DEV, amp=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model)
    t = time.perf_counter()
    first = train_step(compiled, batch, DEV, amp=True)
    print(f"\n[gpu] torch.compile: first step {time.perf_counter() - t:.1f} s (compilation), "
          f"{torch._dynamo.utils.counters['stats']['unique_graphs']} graphs, graph breaks: "
          f"{sum(torch._dynamo.utils.counters['graph_break'].values())}")
    second = train_step(compiled, batch, DEV, amp=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    check_step("MLM step, torch.compile vs eager (CUDA bf16)", first, eager)
    check_step("MLM step, torch.compile second call vs eager", second, eager)


# ---------------------------------------------------------------------------------------------
# Data parallel over NCCL
# ---------------------------------------------------------------------------------------------

def _concat(a: TrainBatch, b: TrainBatch) -> TrainBatch:
    n = a.ids.numel()
    cu = torch.cat([a.cu_seqlens, b.cu_seqlens[1:] + n])
    return TrainBatch(torch.cat([a.ids, b.ids]), torch.cat([a.labels, b.labels]), cu,
                      max(a.max_seqlen, b.max_seqlen))


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: the trainer's DDP wrapping and loss scaling on half of a batch; rank 0 also
    runs the whole batch in one process and writes how far the averaged gradients are."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from mmbert.train.distributed import init_distributed, shutdown, unwrap, wrap_model

    env = init_distributed()
    cfg = gpu_config()
    halves = [make_train_batch(cfg, 2, 512, 32, seed=13 + r) for r in range(world)]
    masked = sum(h.num_masked for h in halves)
    torch.manual_seed(14)
    model = wrap_model(MaskedLM(cfg).to(env.device), env, "ddp")
    b = halves[rank]
    out_ = model(b.ids.to(env.device), cu_seqlens=b.cu_seqlens.to(env.device),
                 max_seqlen=b.max_seqlen, labels=b.labels.to(env.device))
    (out_.token_loss.sum() * (world / masked)).backward()  # as the trainer scales it
    if rank == 0:
        whole = _concat(*halves)
        torch.manual_seed(14)
        single = MaskedLM(cfg).to(env.device)
        single(whole.ids.to(env.device), cu_seqlens=whole.cu_seqlens.to(env.device),
               max_seqlen=whole.max_seqlen, labels=whole.labels.to(env.device)).loss.backward()
        g_ddp = torch.cat([p.grad.double().flatten() for p in unwrap(model).parameters()])
        g_one = torch.cat([p.grad.double().flatten() for p in single.parameters()])
        with open(out, "w") as f:
            json.dump({"rel": float((g_ddp - g_one).norm() / g_one.norm()),
                       "backend": torch.distributed.get_backend()}, f)
    shutdown(env)


@pytest.mark.gpu
def test_ddp_nccl_two_processes_match_one(tmp_path):
    # The one skip in this file, and it reflects the hardware: NCCL data parallelism needs two
    # devices, and a one-GPU machine cannot run it. Everything else fails without a GPU.
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU: NCCL DDP needs 2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.json"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    res = json.loads(out.read_text())
    print(f"\n[gpu] DDP over {res['backend']}, 2 processes vs 1: gradients relative "
          f"{res['rel']:.2e} (tol 1e-3)")
    assert res["backend"] == "nccl"
    assert res["rel"] <= 1e-3
