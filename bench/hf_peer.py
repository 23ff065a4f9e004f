"""The PyTorch peer: Hugging Face LlamaForCausalLM with the 0.5B shape, as the official DroPE stack trains it.

  python bench/hf_peer.py [--seq_len=1024] [--batch=32] [--steps=20] [--no_compile]

torch.compile, SDPA attention, bf16 autocast over fp32 parameters, fused AdamW (no weight
decay), gradient clipping at 1.0. Prints the same figures as launch/benchmark.py: median step
time after warm-up, tokens/s and MFU (PaLM formula over 989 TFLOP/s for an H100).
"""

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no_compile", action="store_true")
    args = p.parse_args()

    cfg = LlamaConfig(vocab_size=49152, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=args.seq_len,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
    n_layers, d = cfg.num_hidden_layers, cfg.hidden_size
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

    if not args.no_compile:
        model.forward = torch.compile(model.forward)
    batches = [torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), device="cuda") for _ in range(2)]
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
    flops_per_token = 6 * n_non_embedding + 12 * n_layers * d * args.seq_len
    mfu = None if peak is None else tokens_per_sec * flops_per_token / peak
    r = {"device": name, "torch": torch.__version__, "compile": not args.no_compile, "seq_len": args.seq_len,
         "batch": args.batch, "step_time_s": step_time, "tokens_per_sec": tokens_per_sec, "mfu": mfu,
         "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "final_loss": float(loss)}
    print(f"HF peer on {name}: seq {args.seq_len} x batch {args.batch} | step {step_time * 1e3:.1f} ms | "
          f"{tokens_per_sec:,.0f} tokens/s | MFU {mfu:.1%} | peak {r['peak_memory_gib']:.1f} GiB")
    print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
