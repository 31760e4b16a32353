"""Content-encoder forward latency (p50/p99, B=1 and B=256) and parameter counts, CPU.

Run:   OMP_NUM_THREADS=1 .venv/bin/python bench/encoders.py [--threads 1] [--quick]

What it measures, all in one run so the baselines share the machine's state:
  * `predict()` latency (no_grad, eval) of every encoder in the registry with its default
    config (VBF++ included once registered), plus CVA at M = 1, 4, 8 and MFQ at L = 5 and 20
    and with the per-stream orthogonal projection. Inputs: L = 10 segments of pooled features
    (1280-d frames, 384-d speech and comments; what `batch_from_segments` produces), all
    present. The mean-pool encoder is the baseline.
  * parameter counts; MFQ also without its hashed author table; CVA in the paper's setting
    (384-d DINOv3 frames) against the CVA paper's Table 6.
  * `batch_from_segments` for B = 200 buffers of 10 segments, from wire messages (base64
    decoding) and from pre-decoded segments.

Threads: `torch.set_num_threads(--threads)` (default 1: one request per core, as the serving
agent runs it, and the CI box has 2 cores shared). p50/p99 are over `--iters` timed calls after
warm-up. GPU: timed only when CUDA is available (`--device cuda`). The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mmbee.encoders.batching import batch_from_segments, decode_segment, synthetic_batch
from mmbee.encoders.registry import ENCODERS, build_encoder
from mmbee.schemas import SegmentClosed, encode_embedding

# CVA paper, Table 6: "# of Param." of CVA(M) with SASRec on MicroLens (384-d frames)
CVA_PAPER_PARAMS = {1: 1_348_864, 2: 2_401_024, 4: 4_504_960, 8: 8_713_984}


def _percentiles(fn: Callable[[], object], iters: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _variants() -> list[tuple[str, str, dict[str, Any], int]]:
    """(label, registry name, config, L) for every timed encoder."""
    out: list[tuple[str, str, dict[str, Any], int]] = []
    for name in ENCODERS:
        if name == "cva":
            out += [(f"cva_m{m}", "cva", {"depth": m}, 10) for m in (1, 4, 8)]
        else:
            label = name.replace("++", "pp").replace("+", "_").replace("-", "_")
            out.append((label, name, {}, 10))
    out += [
        ("mfq_l5", "mfq", {}, 5),
        ("mfq_l20", "mfq", {}, 20),
        ("mfq_op_stream", "mfq", {"op_scope": "stream"}, 10),
    ]
    return out


def _segments(n_buffers: int, n_segments: int) -> list[list[SegmentClosed]]:
    rng = np.random.default_rng(0)
    t0 = 1_700_000_000_000
    return [
        [
            SegmentClosed(
                author_id=f"a{b}",
                live_id=f"l{b}",
                start_ms=t0 + 10_000 * k,
                end_ms=t0 + 10_000 * (k + 1),
                n_frames=3,
                n_comments=2,
                n_asr=1,
                frame_mean=encode_embedding(rng.standard_normal(1280)),
                comment_mean=encode_embedding(rng.standard_normal(384)),
                asr_mean=encode_embedding(rng.standard_normal(384)),
            )  # fmt: skip
            for k in range(n_segments)
        ]
        for b in range(n_buffers)
    ]


def measure(threads: int = 1, quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Run every measurement; returns the figures (also what the JSON line holds)."""
    torch.set_num_threads(threads)
    iters = {1: 30 if quick else 300, 256: 5 if quick else 40}
    figures: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "latency": {},
        "params": {},
    }
    for label, name, cfg, L in _variants():
        enc = build_encoder(name, cfg, seed=0).to(device).eval()
        figures["params"][label] = _params(enc)
        for B in (1, 256):
            if L != 10 and B != 1:
                continue
            batch = synthetic_batch(B, L, full=True, generator=torch.Generator().manual_seed(B))
            batch = batch.to(device)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

            def call(enc: Any = enc, batch: Any = batch, sync: Any = sync) -> None:
                enc.predict(batch)
                sync()

            res = _percentiles(call, iters[B], warmup=max(3, iters[B] // 10))
            figures["latency"][f"{label}_b{B}"] = res
            print(f"{label:16s} B={B:3d}  p50 {res['p50_ms']:8.3f} ms  p99 {res['p99_ms']:8.3f} ms")
    mfq = build_encoder("mfq", seed=0)
    figures["params"]["mfq_without_author_table"] = _params(mfq) - mfq.author_emb.weight.numel()
    figures["params"]["cva_paper_setting"] = {
        f"m{m}": {
            "ours": _params(build_encoder("cva", {"visual_dim": 384, "depth": m})),
            "paper": paper,
        }
        for m, paper in CVA_PAPER_PARAMS.items()
    }
    figures["params"]["cva_block"] = _params(build_encoder("cva", {"depth": 1}).core.blocks[0])

    # ---- VBF++ (section owned by the VBF++ engineer; see docs/vbf.md) -------------------------
    # Training-step time at B=256, L=10 with a linear gift head as the rec loss: the full step
    # (forward, replay buffer, discriminator step, encoder step with L_adv), the same without
    # RAR, one meta step (support 50, query 256, second-order, 1 inner step), and the baseline
    # in the same run: a fixed-fusion encoder trained with the same head and Adam.
    from mmbee.encoders.vbf_train import DomainTask, VBFTrainConfig, VBFTrainer

    def _head_loss(d: int) -> torch.nn.Module:
        class _Head(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lin = torch.nn.Linear(d, 1)

            def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                logit = self.lin(h).squeeze(-1)
                return torch.nn.functional.binary_cross_entropy_with_logits(
                    logit, y, reduction="none"
                )

        return _Head().to(device)

    tb = synthetic_batch(256, 10, full=True, generator=torch.Generator().manual_seed(5))
    tb = tb.to(device)
    ty = (torch.arange(256, device=device) % 7 == 0).float()
    sb = synthetic_batch(50, 10, full=True, generator=torch.Generator().manual_seed(6)).to(device)
    sy = ty[:50]
    n_train = 3 if quick else 15
    vbf_train: dict[str, Any] = {}
    for label, rar in (("vbfpp", True), ("vbfpp_no_rar", False)):
        venc = build_encoder("vbf++", {}, seed=0).to(device)
        trainer = VBFTrainer(venc, _head_loss(venc.out_dim), VBFTrainConfig(rar=rar))
        vbf_train[f"{label}_train_step_b256"] = _percentiles(
            lambda t=trainer: t.train_step(tb, ty), n_train, warmup=3
        )
        if rar:
            assert "D" in trainer.history, "the discriminator never stepped"
            task = DomainTask(sb, sy, tb, ty)
            vbf_train["vbfpp_meta_step_s50_q256"] = _percentiles(
                lambda t=trainer, k=task: t.meta_train_step([k]), n_train, warmup=2
            )
    fenc = build_encoder("fixed-fusion", {}, seed=0).to(device)
    fhead = _head_loss(fenc.out_dim)
    fopt = torch.optim.Adam([*fenc.parameters(), *fhead.parameters()], lr=1e-3)

    def _fixed_step() -> None:
        loss = fhead(fenc(tb).embedding, ty).mean()
        fopt.zero_grad()
        loss.backward()
        fopt.step()

    vbf_train["baseline_fixed_fusion_train_step_b256"] = _percentiles(_fixed_step, n_train, 3)
    for k, v in vbf_train.items():
        print(f"{k:40s} p50 {v['p50_ms']:8.3f} ms  p99 {v['p99_ms']:8.3f} ms")
    figures["vbf_train"] = vbf_train
    figures["vbfpp_b1_p50_ms"] = figures["latency"]["vbfpp_b1"]["p50_ms"]
    figures["vbfpp_b256_p50_ms"] = figures["latency"]["vbfpp_b256"]["p50_ms"]
    figures["vbfpp_train_step_b256_p50_ms"] = vbf_train["vbfpp_train_step_b256"]["p50_ms"]
    figures["params_vbfpp"] = figures["params"]["vbfpp"]
    # ---- end of the VBF++ section ---------------------------------------------------------------

    wire = _segments(200, 10)
    decoded = [[decode_segment(s) for s in buf] for buf in wire]
    rows = list(range(200))
    figures["batching_b200_l10"] = {
        "from_wire": _percentiles(
            lambda: batch_from_segments(wire, rows, 10), 3 if quick else 15, 2
        ),
        "from_decoded": _percentiles(
            lambda: batch_from_segments(decoded, rows, 10), 10 if quick else 100, 5
        ),
    }
    for k, v in figures["batching_b200_l10"].items():
        print(f"batch_from_segments B=200 L=10 {k:12s} p50 {v['p50_ms']:8.3f} ms")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    fig = measure(args.threads, args.quick, args.device)
    lat, par = fig["latency"], fig["params"]
    summary = {
        "mfq_b1_p50_ms": lat["mfq_b1"]["p50_ms"],
        "mfq_b1_p99_ms": lat["mfq_b1"]["p99_ms"],
        "mfq_b256_p50_ms": lat["mfq_b256"]["p50_ms"],
        "cva_m1_b1_p50_ms": lat["cva_m1_b1"]["p50_ms"],
        "cva_m4_b1_p50_ms": lat["cva_m4_b1"]["p50_ms"],
        "cva_m8_b1_p50_ms": lat["cva_m8_b1"]["p50_ms"],
        "cva_m4_b256_p50_ms": lat["cva_m4_b256"]["p50_ms"],
        "baseline_mean_pool_b1_p50_ms": lat["mean_pool_b1"]["p50_ms"],
        "baseline_mean_pool_b256_p50_ms": lat["mean_pool_b256"]["p50_ms"],
        "params_mfq": par["mfq"],
        "params_mfq_without_author_table": par["mfq_without_author_table"],
        "params_cva_m1": par["cva_m1"],
        "params_cva_m4": par["cva_m4"],
        "params_cva_m8": par["cva_m8"],
        "params_cva_block": par["cva_block"],
        "params_cva_m4_paper_setting": par["cva_paper_setting"]["m4"]["ours"],
        "params_cva_m4_paper_table6": CVA_PAPER_PARAMS[4],
        "batching_b200_from_decoded_p50_ms": fig["batching_b200_l10"]["from_decoded"]["p50_ms"],
        "batching_b200_from_wire_p50_ms": fig["batching_b200_l10"]["from_wire"]["p50_ms"],
        **fig,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
