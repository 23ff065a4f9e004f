"""Stage the science corpus: the source code installed on this machine, one document per directory.

  python experiments/drope_small/stage_corpus.py --out=DIR [--max_mb=800] [--vocab_size=16384]

Walks the Python installation's site-packages and standard library, and writes every directory's
source files (.py, .pyi, C/C++/CUDA sources and headers, .md/.rst docs) as one JSONL document, the
files separated by a "# file: <path>" line, so that a long context holds related code (a package's
modules import and call each other). Directories larger than --doc_mb are cut into several
documents; no top-level package gives more than --package_mb. Writes DIR/corpus/*.jsonl and trains a
byte-level BPE tokenizer on a sample of it with the `tokenizers` library into DIR/tokenizer/tokenizer.json
(or copies --tokenizer: the one committed beside this file, trained so on the GPU machine, makes the token
ids of docs/reproduction.md).
Deterministic for a given installation.
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import sys
import sysconfig

EXTENSIONS = {".py", ".pyi", ".c", ".cc", ".cpp", ".cu", ".cuh", ".h", ".hpp", ".md", ".rst"}
EOS = "<|endoftext|>"


def source_roots() -> list[pathlib.Path]:
    paths = sysconfig.get_paths()
    roots = {pathlib.Path(paths["purelib"]), pathlib.Path(paths["platlib"]), pathlib.Path(paths["stdlib"])}
    return sorted(r.resolve() for r in roots if r.is_dir())


def directory_documents(root: pathlib.Path, max_file_bytes: int, doc_bytes: int, skip: tuple[str, ...],
                        other_roots: list[pathlib.Path]):
    """(directory, text) for every directory under root holding source files, in a fixed order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and pathlib.Path(dirpath, d) not in other_roots)
        parts, size = [], 0
        for name in sorted(filenames):
            path = pathlib.Path(dirpath) / name
            if path.suffix not in EXTENSIONS or path.is_symlink() or not 0 < path.stat().st_size <= max_file_bytes:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            parts.append(f"# file: {path.relative_to(root)}\n{text}\n")
            size += len(parts[-1])
            if size >= doc_bytes:
                yield dirpath, "".join(parts)
                parts, size = [], 0
        if parts:
            yield dirpath, "".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max_mb", type=float, default=800, help="stop after this much text")
    parser.add_argument("--doc_mb", type=float, default=0.5, help="cut a directory's text into documents this large")
    parser.add_argument("--max_file_mb", type=float, default=1.0, help="skip larger files (generated tables)")
    parser.add_argument("--package_mb", type=float, default=48,
                        help="at most this much text from one top-level package, so no single one dominates")
    parser.add_argument("--files", type=int, default=64, help="JSONL files to spread the documents over")
    parser.add_argument("--tokenizer", default="", help="a tokenizer directory to copy instead of training one")
    parser.add_argument("--vocab_size", type=int, default=16384)
    parser.add_argument("--tokenizer_sample_mb", type=float, default=64)
    parser.add_argument("--skip", default="drope_jax,__pycache__,tests,test",
                        help="comma-separated directory names left out (this project, caches, test suites)")
    args = parser.parse_args()

    out = pathlib.Path(args.out)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    writers = [open(out / "corpus" / f"part-{i:03d}.jsonl", "w") for i in range(args.files)]
    budget, total, docs = int(args.max_mb * 2**20), 0, 0
    sample, rng = [], random.Random(0)
    sample_prob = min(1.0, args.tokenizer_sample_mb / args.max_mb)
    skip = tuple(args.skip.split(","))
    roots, per_package = source_roots(), {}
    for root in roots:  # the standard library holds site-packages: each is walked once
        for directory, text in directory_documents(root, int(args.max_file_mb * 2**20), int(args.doc_mb * 2**20),
                                                   skip, [r for r in roots if r != root]):
            package = (root, pathlib.Path(directory).relative_to(root).parts[:1])
            if per_package.get(package, 0) >= args.package_mb * 2**20:
                continue
            per_package[package] = per_package.get(package, 0) + len(text)
            writers[docs % args.files].write(json.dumps({"text": text}) + "\n")
            total, docs = total + len(text), docs + 1
            if rng.random() < sample_prob:
                sample.append(text)
            if total >= budget:
                break
        if total >= budget:
            break
    for w in writers:
        w.close()
    print(f"staged {docs:,} documents, {total / 2**20:,.1f} MiB of text from {[str(r) for r in roots]}")

    (out / "tokenizer").mkdir(exist_ok=True)
    if args.tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(pathlib.Path(args.tokenizer) / name, out / "tokenizer" / name)
        print(f"copied the tokenizer in {args.tokenizer} -> {out / 'tokenizer'}")
        return 0
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample, trainer=trainer)
    tok.save(str(out / "tokenizer" / "tokenizer.json"))
    (out / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
    print(f"trained a byte-level BPE tokenizer ({tok.get_vocab_size():,} tokens) on {len(sample):,} documents, "
          f"{sum(map(len, sample)) / 2**20:,.1f} MiB -> {out / 'tokenizer'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
