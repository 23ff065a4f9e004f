"""The PyTorch peer: the Hugging Face model of a drope-jax config's shape, as the official DroPE stack trains it.

  python bench/hf_peer.py [--shape=0p5b_16b] [--seq_len=1024] [--batch=32] [--steps=20] [--no_compile]

--shape=0p5b_16b: Qwen2ForCausalLM of configs/0p5b_16b.py's shape (the paper's Table 4; transformers' Qwen2
always has q/k/v biases, which the config has not: 0.2M parameters, a negligible share of the work) with its
AdamW (0.9, 0.95, weight decay 0.1). --shape=0p5b_16b_wsd: LlamaForCausalLM of configs/0p5b_16b_wsd.py's shape
(24 layers, d 1024, 16 heads, untied 49,152 vocab), AdamW (0.9, 0.999) without weight decay, the peer of the
measurements in docs/performance.md made before 2026-12-04.
torch.compile, SDPA attention, bf16 autocast over fp32 parameters, fused AdamW, gradient clipping at 1.0.
Prints the same figures as launch/benchmark.py: median step time after warm-up, tokens/s and MFU (PaLM
formula over 989 TFLOP/s for an H100 or H200), without and with the LM head's 6·d·V FLOPs per token.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
# --shape -> (config class, model class, config fields, AdamW betas and weight decay), as the drope-jax config
SHAPES = {
    "0p5b_16b": (Qwen2Config, Qwen2ForCausalLM, dict(
        vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, head_dim=64, tie_word_embeddings=True, rope_theta=1_000_000.0,
        use_sliding_window=False), ((0.9, 0.95), 0.1)),
    "0p5b_16b_wsd": (LlamaConfig, LlamaForCausalLM, dict(
        vocab_size=49152, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, tie_word_embeddings=False), ((0.9, 0.999), 0.0)),
}


def build(shape: str, seq_len: int, batch: int, compile_model: bool = True):
    """The peer's model, optimizer and step on the current CUDA device: (step(tokens) -> loss, two token batches,
    facts for the report). bench/step_variants.py --peer interleaves this step with drope-jax's in one process."""
    config_cls, model_cls, fields, (betas, weight_decay) = SHAPES[shape]
    cfg = config_cls(**fields, max_position_embeddings=seq_len, attn_implementation="sdpa")
    model = model_cls(cfg).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=betas, eps=1e-8, weight_decay=weight_decay, fused=True)
    n_non_embedding = sum(p.numel() for n, p in model.named_parameters()
                          if "embed_tokens" not in n and "lm_head" not in n)

    def step(tokens):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=tokens[:, :-1], labels=tokens[:, 1:].contiguous()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if compile_model:
        model.forward = torch.compile(model.forward)
    batches = [torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), device="cuda") for _ in range(2)]
    facts = {"model": model_cls.__name__, "n_layers": cfg.num_hidden_layers, "d": cfg.hidden_size,
             "vocab": cfg.vocab_size, "n_non_embedding": n_non_embedding}
    return step, batches, facts


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="0p5b_16b", choices=sorted(SHAPES))
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no_compile", action="store_true")
    args = p.parse_args()

    step, batches, facts = build(args.shape, args.seq_len, args.batch, not args.no_compile)
    for i in range(args.warmup):
        step(batches[i % 2])
    torch.cuda.synchronize()
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        loss = step(batches[i % 2])
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times)
    tokens_per_sec = args.batch * args.seq_len / step_time
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    flops_per_token = 6 * facts["n_non_embedding"] + 12 * facts["n_layers"] * facts["d"] * args.seq_len
    head_flops_per_token = 6 * facts["d"] * facts["vocab"]
    mfu = None if peak is None else tokens_per_sec * flops_per_token / peak
    mfu_head = None if peak is None else tokens_per_sec * (flops_per_token + head_flops_per_token) / peak
    r = {"device": name, "torch": torch.__version__, "shape": args.shape, "model": facts["model"],
         "compile": not args.no_compile, "seq_len": args.seq_len, "batch": args.batch, "step_time_s": step_time,
         "tokens_per_sec": tokens_per_sec, "mfu": mfu, "mfu_with_lm_head": mfu_head,
         "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "final_loss": float(loss)}
    print(f"HF peer ({facts['model']}, {args.shape}) on {name}: seq {args.seq_len} x batch {args.batch} | "
          f"step {step_time * 1e3:.1f} ms | {tokens_per_sec:,.0f} tokens/s | MFU {mfu:.1%} ({mfu_head:.1%} with the "
          f"LM head) | peak {r['peak_memory_gib']:.1f} GiB")
    print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
