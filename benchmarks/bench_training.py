"""Training-step speed of the default STLSER model on CPU: utterances/s, achieved GFLOP/s
against a large fp32 matmul measured in the same run, variants (channels_last, bf16 autocast,
torch.compile, length bucketing) and a profiler table of the baseline step.

    python -m benchmarks.bench_training [--quick]

A step is forward + cross-entropy + backward + Adam on one padded batch of random log-mel
features whose lengths follow EmoDB's (1.2-9 s, mean 2.8 s, 100 frames per second).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import numpy as np

from benchmarks import benchlib as bl

SIZES = {
    "full": {
        "batch": 32,
        "steps": 8,
        "warmup": 2,
        "epoch_utts": 428,
        "epoch_reps": 1,
        "matmul_n": 2048,
        "matmul_reps": 5,
        "profile_steps": 3,
        "compile": True,
        "compile_timeout": 1200.0,
    },
    "quick": {
        "batch": 8,
        "steps": 2,
        "warmup": 1,
        "epoch_utts": 32,
        "epoch_reps": 1,
        "matmul_n": 1024,
        "matmul_reps": 3,
        "profile_steps": 1,
        "compile": False,
        "compile_timeout": 300.0,
    },
}
N_FEATURES = 40
N_CLASSES = 4


def frame_lengths(n: int, seed: int) -> list[int]:
    """EmoDB-like utterance lengths in frames (seconds × 100)."""
    return [int(round(s * 100)) for s in bl.emodb_like_seconds(n, seed)]


def random_items(lengths: list[int], seed: int) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((t, N_FEATURES)).astype(np.float32), int(i % N_CLASSES))
        for i, t in enumerate(lengths)
    ]


def make_batch(batch: int, seed: int = 1) -> tuple[Any, Any, Any]:
    """One padded batch (feats[B,T,40], lengths[B], labels[B]) via stlser's own collate."""
    from stlser.training import collate

    return collate(random_items(frame_lengths(batch, seed), seed))


def make_model(channels_last: bool = False) -> tuple[Any, Any]:
    import torch

    from stlser.config import NetworkConfig, TrainConfig
    from stlser.model import STLSER

    torch.manual_seed(0)
    model = STLSER(NetworkConfig(), N_FEATURES, N_CLASSES).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    tc = TrainConfig()
    return model, torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)


def train_step(model: Any, opt: Any, batch: tuple[Any, Any, Any], bf16: bool = False) -> Any:
    """forward + loss + backward + Adam; returns the loss."""
    import torch
    import torch.nn.functional as F

    feats, lengths, y = batch
    opt.zero_grad(set_to_none=True)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        logits = model(feats, lengths)
    loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    opt.step()
    return loss


def time_variant(
    batch: tuple, steps: int, warmup: int, channels_last: bool = False, bf16: bool = False
) -> list[float]:
    model, opt = make_model(channels_last)
    return bl.repeat(lambda: train_step(model, opt, batch, bf16), steps, warmup)


def compiled_variant(batch_size: int, steps: int, warmup: int) -> dict[str, Any]:
    """torch.compile(model) training steps (run in a child process by `main`)."""
    import torch

    batch = make_batch(batch_size)
    model, opt = make_model()
    cmodel = torch.compile(model)
    t0 = time.perf_counter()
    train_step(cmodel, opt, batch)
    first = time.perf_counter() - t0
    times = bl.repeat(lambda: train_step(cmodel, opt, batch), steps, max(2, warmup))
    n_breaks, reasons = bl.graph_break_summary()
    return {"compile_s": first, "times": times, "graph_breaks": n_breaks, "reasons": reasons}


def step_flops(batch: tuple) -> tuple[float, float]:
    """(FLOPs counted by FlopCounterMode for forward+backward, analytic LSTM FLOPs it misses).

    FlopCounterMode has no formula for ``mkldnn_rnn_layer``; the BiLSTM's matmuls are added
    by hand: 2·4H·(D+H) per step and direction forward, twice that backward."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = make_model()
    feats, lengths, y = batch
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(model(feats, lengths), y).backward()
    counted = float(fc.get_total_flops())
    lstm = model.lstm.fwd
    d_in, h = lstm.input_size, lstm.hidden_size
    steps = feats.shape[1] // model.time_stride  # the padded batch runs every step
    per_dir = 2 * 4 * h * (d_in + h) * feats.shape[0] * steps
    return counted, float(3 * 2 * per_dir)


def matmul_peak(n: int, reps: int) -> tuple[float, float]:
    """(best, median) GFLOP/s of an n×n @ n×n fp32 matmul with torch's default threads."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    t = bl.stats(bl.repeat(lambda: torch.mm(a, b), reps, 1))
    flops = 2.0 * n**3
    return flops / t["min"] / 1e9, flops / t["median"] / 1e9


def phase_split(batch: tuple, reps: int) -> dict[str, float]:
    """Median seconds of forward, backward and Adam in the baseline step."""
    import torch.nn.functional as F

    model, opt = make_model()
    feats, lengths, y = batch
    out: dict[str, list[float]] = {"forward": [], "backward": [], "Adam step": []}
    for i in range(reps + 1):
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(feats, lengths), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i:  # the first is a warm-up
            for k, v in zip(out, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                out[k].append(v)
    return {k: float(np.median(v)) for k, v in out.items()}


#: Profiler op-name patterns → part of the work (first match wins).
CATEGORIES = [
    ("convolution (fwd + bwd)", ("conv",)),
    ("LSTM recurrence (mkldnn_rnn_layer fwd + bwd)", ("rnn", "lstm")),
    ("batch norm", ("batch_norm",)),
    ("ELU", ("elu",)),
    ("average pooling", ("pool",)),
    ("dropout (bernoulli)", ("bernoulli", "dropout")),
    ("matmul (linear, attention)", ("mm", "matmul", "linear", "scaled_dot", "attention")),
    (
        "elementwise (masks, dropout scaling, Adam, copies)",
        (
            "mul",
            "div",
            "add",
            "sub",
            "sqrt",
            "where",
            "copy",
            "fill",
            "zero",
            "lerp",
            "neg",
            "exp",
            "sum",
            "mean",
            "clamp",
            "cat",
            "gather",
            "scatter",
            "index",
            "masked",
        ),
    ),
]


def profile_step(batch: tuple, steps: int) -> tuple[str, list[list[str]]]:
    """(torch.profiler table of the top 12 ops by self CPU time, shares by category)."""
    from torch.profiler import ProfilerActivity, profile

    model, opt = make_model()
    train_step(model, opt, batch)
    with contextlib.redirect_stdout(sys.stderr), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(model, opt, batch)
    ka = prof.key_averages()
    table = ka.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48)
    total = sum(e.self_cpu_time_total for e in ka) or 1.0
    shares: dict[str, float] = {}
    for e in ka:
        name = e.key.lower()
        cat = next((c for c, pats in CATEGORIES if any(p in name for p in pats)), "other")
        shares[cat] = shares.get(cat, 0.0) + e.self_cpu_time_total
    rows = [
        [c, f"{100 * v / total:.1f} %", bl.fmt(v / 1000 / steps)]
        for c, v in sorted(shares.items(), key=lambda kv: -kv[1])
    ]
    return table, rows


def epoch(items: list[tuple[np.ndarray, int]], batch_size: int, bucket: bool) -> dict[str, float]:
    """One epoch over `items` with stlser's batch sampler; seconds and padding share."""
    from stlser.training import collate, make_batches

    lengths = [len(x) for x, _ in items]
    batches = make_batches(lengths, batch_size, seed=0, shuffle=True, bucket=bucket)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    model, opt = make_model()
    t0 = time.perf_counter()
    for b in batches:
        train_step(model, opt, collate([items[i] for i in b]))
    return {
        "seconds": time.perf_counter() - t0,
        "padding": 1 - sum(lengths) / padded,
        "batches": len(batches),
    }


def main(quick: bool = False, **overrides: Any) -> str:
    """Run the training benchmark; return its markdown section."""
    import torch

    z = bl.sizes(SIZES, quick, overrides)
    load = bl.load_text()
    bs, steps, warmup = z["batch"], z["steps"], z["warmup"]
    batch = make_batch(bs)
    feats, lengths, _ = batch
    pad_share = 1 - float(lengths.sum()) / (bs * feats.shape[1])
    peak_best, peak_med = matmul_peak(z["matmul_n"], z["matmul_reps"])
    counted, lstm_flops = step_flops(batch)
    flops = counted + lstm_flops

    rows: list[list[str]] = []
    base_med = None

    def add(name: str, times: list[float] | None, note: str = "") -> None:
        nonlocal base_med
        if times is None:
            rows.append([name, "-", "-", "-", "-", "-", "-", note])
            return
        s = bl.stats(times)
        base_med = base_med or s["median"]
        gf = flops / s["median"] / 1e9
        rows.append(
            [
                name,
                bl.fmt(s["min"]),
                bl.fmt(s["median"]),
                bl.fmt(bs / s["median"]),
                bl.fmt(gf),
                f"{100 * gf / peak_best:.1f} %",
                bl.fmt(base_med / s["median"]),
                note,
            ]
        )

    add("baseline (fp32, contiguous)", time_variant(batch, steps, warmup))
    add("channels_last", time_variant(batch, steps, warmup, channels_last=True))
    bf16_note = (
        ""
        if "avx512_bf16" in bl.cpu_flags() or "amx" in bl.cpu_flags()
        else "no native bf16 on this CPU"
    )
    add(
        "bf16 autocast",
        time_variant(batch, steps, warmup, bf16=True),
        bf16_note or "GFLOP/s counts the fp32 FLOPs",
    )
    if z["compile"]:
        try:
            t0 = time.perf_counter()
            res = bl.run_isolated(
                "bench_training",
                "compiled_variant",
                {"batch_size": bs, "steps": steps, "warmup": warmup},
                z["compile_timeout"],
            )
            why = f" ({'; '.join(res['reasons'])})" if res["reasons"] else ""
            add(
                "torch.compile (inductor)",
                res["times"],
                f"first step (compile) {res['compile_s']:.0f} s, child process "
                f"{time.perf_counter() - t0:.0f} s in all; {res['graph_breaks']} graph "
                f"break(s){why}",
            )
        except RuntimeError as e:
            add("torch.compile (inductor)", None, f"failed: {bl.short_error(e)}")
    else:
        add("torch.compile (inductor)", None, "skipped (--quick)")

    items = random_items(frame_lengths(z["epoch_utts"], seed=2), seed=2)
    ep_rows = []
    for bucket in (False, True):
        res = [epoch(items, bs, bucket) for _ in range(z["epoch_reps"])]
        t = bl.stats([r["seconds"] for r in res])
        ep_rows.append(
            [
                "on" if bucket else "off",
                str(res[0]["batches"]),
                f"{100 * res[0]['padding']:.1f} %",
                bl.fmt(t["min"]),
                bl.fmt(t["median"]),
                bl.fmt(len(items) / t["median"]),
            ]
        )
    phases = phase_split(batch, max(1, steps // 2))
    table, cat_rows = profile_step(batch, z["profile_steps"])

    headers = [
        "variant",
        "min s/step",
        "median s/step",
        "utt/s (median)",
        "GFLOP/s (median)",
        "share of matmul peak",
        "speed-up vs baseline",
        "note",
    ]
    phase_txt = ", ".join(f"{k} {bl.ms(v)} ms" for k, v in phases.items())
    intro = f"""
One training step of the default model (466 K parameters) at batch {bs}: forward, cross-entropy,
backward and Adam, on random log-mel features [B, T, 40]. Utterance lengths are EmoDB-like
(lognormal, 1.2-9 s, mean 2.8 s; 100 frames/s); this batch is padded to {feats.shape[1]} frames,
{100 * pad_share:.0f} % of its frames are padding. {steps} timed steps after {warmup} warm-up
step(s); torch threads {torch.get_num_threads()}. Load average at start: {load}.

FLOPs of one step (forward + backward, not Adam): {flops / 1e9:.1f} GFLOP
({counted / 1e9:.1f} counted by `torch.utils.flop_counter.FlopCounterMode`, which has no formula
for the LSTM's `mkldnn_rnn_layer`, + {lstm_flops / 1e9:.2f} GFLOP for the BiLSTM counted by
hand). Practical peak: {z["matmul_n"]}×{z["matmul_n"]} @ {z["matmul_n"]}×{z["matmul_n"]} fp32
matmul, best of {z["matmul_reps"]}: {peak_best:.0f} GFLOP/s (median {peak_med:.0f}).
"""
    ep_table = bl.md_table(
        ["bucketing", "batches", "padding share", "min s", "median s", "utt/s (median)"], ep_rows
    )
    cat_table = bl.md_table(["operation kind", "share of self CPU time", "ms per step"], cat_rows)
    body = bl.md_table(headers, rows)
    body += f"""

Length bucketing (`train.bucket`), one epoch of {len(items)} EmoDB-like utterances at batch {bs}
with stlser's own `make_batches` + `collate` (same model and step as above):

{ep_table}

Where the baseline step's time goes: {phase_txt} (medians, measured separately).
Self CPU time by kind of operation (torch.profiler, {z["profile_steps"]} step(s), per-step ms):

{cat_table}

Top operators by self CPU time (baseline step):

```text
{table.strip()}
```
"""
    return bl.section("Training step", intro, body, quick)


def cli(argv: list[str] | None = None) -> None:
    bl.cli(main, __doc__, argv)


if __name__ == "__main__":
    cli()
