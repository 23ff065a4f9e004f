"""The LM head + loss of the PyTorch peer alone, to set beside bench/step_breakdown.py's row of the same name:
logits = x @ W^T in bf16, then transformers' causal-LM loss (cross-entropy on float32 logits), forward and
backward, under torch.compile as bench/hf_peer.py compiles the whole model.

  python bench/lm_head_peer.py [--batch=32] [--seq_len=1024] [--d_model=896] [--vocab=151936]
"""

import statistics

import torch
import torch.nn.functional as F
from head_shape import parse_head_shape


def main():
    args = parse_head_shape(__doc__)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(args.batch, args.seq_len, args.d_model, device="cuda", dtype=torch.bfloat16, generator=g,
                    requires_grad=True)
    weight = (0.02 * torch.randn(args.vocab, args.d_model, device="cuda", generator=g)).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.batch, args.seq_len), device="cuda", generator=g)

    @torch.compile
    def head_loss(x, weight):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = x @ weight.T
        return F.cross_entropy(logits.float().view(-1, args.vocab), targets.view(-1))

    def fwd_bwd():
        x.grad = weight.grad = None
        head_loss(x, weight).backward()

    for _ in range(3):
        fwd_bwd()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fwd_bwd()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()} | batch {args.batch} x seq {args.seq_len} "
          f"| d {args.d_model} vocab {args.vocab}")
    print(f"  LM head + loss, fwd+bwd (peer)  {statistics.median(times):8.1f} ms")


if __name__ == "__main__":
    main()
