#!/usr/bin/env python3
"""GPU training throughput: mom against PyTorch + torch.compile on the same GPT-2, side by side.

Run on a GPU machine (jobs/device/check.sh runs it from the bundle):

    python3 jobs/bench/gpu_train_vs_torch.py --mom "BUNDLE/run.sh mom" [--batch 16] [--seq 1024]

One run measures, with the same model (GPT-2 124M: 12 layers, width 768, context 1024, tied
head), batch and sequence length:
  * PyTorch with torch.compile, bf16 autocast and fused AdamW (what a user would run), and the
    same in plain f32 (TF32 off), the like-for-like figure for mom's f32 path;
  * mom's `mom bench train` on CUDA (forward, backward, clipping, AdamW: the same step), with
    train.matmul_precision "highest" (f32 GEMMs: against PyTorch f32) and "medium" (GEMMs on
    bf16 tensor cores with f32 storage: against PyTorch bf16, which also stores bf16
    activations; mom has no bf16 storage yet);
  * mom's MoE (8 experts, top-2) and MoM-small configs against mom's dense model, per active
    FLOP (llm.c's 6N + 6LCT over the parameters a token uses, Gpt2::flops_per_token), all three
    at "medium".
Prints tokens/s, MFU against --peak-tflops (790: H100/H200 dense bf16) and the ratios, and
writes them as JSON to --json. The PyTorch model is written here from MODELS.md §1 (pre-LN
GPT-2, GELU tanh form, tied head), not taken from mom.
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gpt2_flops_per_token(n_layer, n_embd, vocab, seq):
    # 6 × matmul parameters a token uses (attention qkv + proj, MLP up + down, the tied head) +
    # 6 × L × C × T for attention's two T-long products: Gpt2::flops_per_token's definition.
    c = n_embd
    matmul = n_layer * (3 * c * c + c * c + 8 * c * c) + vocab * c
    return 6 * matmul + 6 * n_layer * c * seq


def torch_tokens_per_s(args, precision):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    C, L, H, V, T = 768, 12, 12, 50257, args.seq

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C)
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)
            self.ln_2 = nn.LayerNorm(C)
            self.c_fc = nn.Linear(C, 4 * C)
            self.c_proj2 = nn.Linear(4 * C, C)

        def forward(self, x):
            B, T_, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T_, H, C // H).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).reshape(B, T_, C))
            return x + self.c_proj2(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(V, C)
            self.wpe = nn.Embedding(1024, C)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.normal_(p, std=0.02)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for b in self.blocks:
                x = b(x)
            logits = self.ln_f(x) @ self.wte.weight.t()
            return F.cross_entropy(logits.float().view(-1, V), targets.view(-1))

    model = GPT().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_model = torch.compile(model)
    x = torch.randint(0, V, (args.batch, T), device=dev)
    y = torch.randint(0, V, (args.batch, T), device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup + 1):  # the first call compiles
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    del model, opt, step_model
    torch.cuda.empty_cache()
    return args.batch * T / times[len(times) // 2]


def mom_bench(args, config, extra=(), env=None):
    cmd = shlex.split(args.mom) + ["bench", "train", "--config", os.path.join(REPO, "jobs/configs", config),
                                   "--set", "train.device=cuda", "--set", f"train.batch_size={args.batch}",
                                   "--set", f"train.seq_len={args.seq}", "--steps", str(args.steps), "--warmup",
                                   str(args.warmup), "--peak-tflops", str(args.peak_tflops), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env={**os.environ, **(env or {})})
    if r.returncode != 0:
        return {"error": (r.stdout + r.stderr).strip()[-2000:], "command": " ".join(cmd)}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["command"] = " ".join(cmd)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mom", default=os.path.join(REPO, "build/jobs/mom"), help="command that runs mom")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="H100/H200 dense bf16")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per mom run")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--json", default=os.path.join(os.environ.get("OUT", "/tmp"), "gpu_train_bench.json"))
    args = ap.parse_args()
    try:
        import torch

        have_gpu = torch.cuda.is_available()
    except ImportError:
        have_gpu = False
    if not have_gpu:
        print("gpu_train_vs_torch: skipped: no CUDA device visible to PyTorch here (run it on a GPU machine)")
        return 77

    fpt = gpt2_flops_per_token(12, 768, 50257, args.seq)
    res = {"batch": args.batch, "seq": args.seq, "peak_tflops": args.peak_tflops, "flops_per_token_gpt2": fpt}
    if not args.skip_torch:
        import torch

        res["torch"] = {"version": torch.__version__, "device": torch.cuda.get_device_name(0)}
        for prec in ("bf16", "f32"):
            try:
                res["torch"][prec + "_tokens_per_s"] = torch_tokens_per_s(args, prec)
            except Exception as e:  # reported, not fatal: mom's figures still come
                res["torch"][prec + "_error"] = repr(e)[-1000:]
    bf16 = ("--set", "train.matmul_precision=medium")
    res["mom_dense_f32"] = mom_bench(args, "gpt2_small.json")
    res["mom_dense"] = mom_bench(args, "gpt2_small.json", bf16)
    res["mom_moe"] = mom_bench(args, "moe_gpt2_small.json", bf16)
    res["mom_mom"] = mom_bench(args, "mom_gpt2_small.json", bf16)
    # The module pools' side streams against the plain loop (MOM_CUDA_POOL_STREAMS=0).
    res["mom_mom_loop"] = mom_bench(args, "mom_gpt2_small.json", bf16, {"MOM_CUDA_POOL_STREAMS": "0"})

    def per_active_flop_ms(r):  # ms per step / (FLOPs a step does), relative figures only
        return r["step_ms_median"] / (r["flops_per_token"] * args.batch * args.seq) if "step_ms_median" in r else None

    lines = [f"GPU training, GPT-2 124M, batch {args.batch} x {args.seq} tokens, median of {args.steps} steps"]
    t = res.get("torch", {})
    d = res["mom_dense"]
    for label, key in (("PyTorch+compile bf16", "bf16_tokens_per_s"), ("PyTorch+compile f32", "f32_tokens_per_s")):
        if key in t:
            lines.append(f"  {label:32s} {t[key]:10.0f} tok/s  MFU {t[key] * fpt / (args.peak_tflops * 1e12):6.1%}")
    for name, label, torch_key in (("mom_dense", "mom bf16 GEMMs (medium)", "bf16_tokens_per_s"),
                                   ("mom_dense_f32", "mom f32 (highest)", "f32_tokens_per_s")):
        r = res[name]
        if "tokens_per_s" not in r:
            lines.append(f"  {label}: FAILED: {r.get('error', '')[-400:]}")
            continue
        lines.append(f"  {label:32s} {r['tokens_per_s']:10.0f} tok/s  MFU {r.get('mfu', 0):6.1%}")
        if torch_key in t:
            res[name + "_vs_torch"] = r["tokens_per_s"] / t[torch_key]
            lines.append(f"    {label} / {torch_key[:-12]} PyTorch+compile: {res[name + '_vs_torch']:.2f}x"
                         " (target >= 1.0x)")
    base = per_active_flop_ms(d)
    for name in ("mom_moe", "mom_mom"):
        r = res[name]
        if base and per_active_flop_ms(r):
            res[name + "_time_per_active_flop_vs_dense"] = per_active_flop_ms(r) / base
            lines.append(f"  {name[4:]:4s} time per active FLOP / dense: {res[name + '_time_per_active_flop_vs_dense']:.2f}x"
                         f" (target <= 1.15x; {r['tokens_per_s']:.0f} tok/s)")
        else:
            lines.append(f"  {name[4:]}: FAILED: {r.get('error', '')[-400:]}")
    loop, streams = res["mom_mom_loop"], res["mom_mom"]
    if "tokens_per_s" in loop and "tokens_per_s" in streams:
        res["mom_streams_vs_loop"] = streams["tokens_per_s"] / loop["tokens_per_s"]
        lines.append(f"  MoM pools on side streams / plain loop: {res['mom_streams_vs_loop']:.2f}x tokens/s")
    print("\n".join(lines))
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    print("figures:", args.json)
    return 0 if "tokens_per_s" in d and "tokens_per_s" in res["mom_dense_f32"] else 1


if __name__ == "__main__":
    sys.exit(main())
