"""The command line of the LM-head benches (bench/lm_head_peer.py, loss_variants.py, loss_kernels.py): the
head's shape, the paper's Table 4 (configs/0p5b_16b.py at 32 x 1024 tokens) by default."""

import argparse


def parse_head_shape(description: str, **more_flags: str) -> argparse.Namespace:
    """The head's shape flags, and a string flag --NAME=DEFAULT for each of ``more_flags``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--d_model", type=int, default=896)
    p.add_argument("--vocab", type=int, default=151_936)
    for name, default in more_flags.items():
        p.add_argument(f"--{name}", default=default)
    return p.parse_args()
