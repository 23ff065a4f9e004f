"""Stage round 4's corpus: the source code and the text documentation installed on this machine.

  python experiments/round4/stage_corpus.py --out=DIR --tokenizer=experiments/drope_small/tokenizer [--max_mb=1200]
  python launch/prepare_data.py --input='DIR/corpus/*.jsonl' --format=jsonl --split_field=group ...

Round 3 staged Python's site-packages and standard library (experiments/drope_small/stage_corpus.py). This
widens it to every kind of text a GPU machine holds: Python (.py) and its stubs (.pyi), C and C++ sources and
headers (/usr/include, the headers packages ship), CUDA's headers (/usr/local/cuda*/include, site-packages'
nvidia/*/include), Markdown, reStructuredText and plain-text documentation (site-packages, /usr/share/doc, its
gzipped changelogs and READMEs included).

- Every file is kept whole. The files of one kind in one directory make a document ("# file: PATH" before
  each), cut at a file boundary once it passes --doc_mb; its pieces share a "group" (the directory), and
  prepare_data's --split_field=group holds out whole directories.
- A file whose bytes were already staged is left out (licences, vendored copies), and so are files that are
  not UTF-8, larger than --max_file_mb, or look generated (a line over 5,000 characters, or a mean over 300).
- No top-level package gives more than --package_mb. The directories are taken in a fixed random order
  (--seed) until --max_mb, so a cap samples every kind rather than the first roots.
- Writes DIR/corpus/part-NNN.jsonl ({"text", "group", "kind"}), DIR/stage_report.json (documents and bytes per
  kind and per root, what was left out and why, and the tokenizer's check: unknown tokens, exact round trips
  and characters per token on each kind) and copies the tokenizer (default: the one committed for rounds 2
  and 3, trained on the GPU machine's Python) to DIR/tokenizer.
Deterministic for a given installation.
"""

import argparse
import collections
import glob
import gzip
import hashlib
import json
import os
import pathlib
import random
import shutil
import site
import sys
import sysconfig

SUFFIX_KINDS = {".py": "python", ".pyi": "python stubs", ".c": "c/c++ source", ".cc": "c/c++ source",
                ".cpp": "c/c++ source", ".cxx": "c/c++ source", ".h": "c/c++ header", ".hh": "c/c++ header",
                ".hpp": "c/c++ header", ".hxx": "c/c++ header", ".inl": "c/c++ header", ".cu": "cuda source",
                ".cuh": "cuda header", ".md": "markdown", ".rst": "restructuredtext", ".txt": "plain text"}
TEXT_NAMES = {"readme", "news", "changes", "changelog", "history", "todo", "faq"}  # plain text without a suffix
SKIP_DIRS = {"__pycache__", "tests", "test", "drope_jax", ".git"}
LONGEST_LINE, LONGEST_MEAN_LINE = 5000, 300


def default_roots() -> list[pathlib.Path]:
    paths = sysconfig.get_paths()
    python = [paths["stdlib"], paths["purelib"], paths["platlib"], *site.getsitepackages()]
    system = ["/usr/include", "/usr/local/include", *sorted(glob.glob("/usr/local/cuda*/include")), "/usr/share/doc"]
    roots = {pathlib.Path(p).resolve() for p in python + system if pathlib.Path(p).is_dir()}
    return sorted(roots)


def kind_of(path: pathlib.Path) -> str | None:
    """The kind of text a file holds, by its name (a .gz by the name inside), or None to leave it out."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = pathlib.PurePath(name).suffix.lower()
    kind = SUFFIX_KINDS.get(suffix)
    if kind is None and name.split(".")[0].lower() in TEXT_NAMES:
        kind = "plain text"  # README, NEWS, changelog.Debian, ...
    if kind == "c/c++ header" and ("cuda" in path.parts[-3:-1] or _under_cuda(path)):
        kind = "cuda header"
    return kind


def _under_cuda(path: pathlib.Path) -> bool:
    text = str(path)
    return "/cuda" in text.split("/include")[0] or ("/nvidia/" in text and "/include/" in text)


def units(root: pathlib.Path, other_roots: list[pathlib.Path], max_file_bytes: int):
    """(directory, kind, [file paths]) for every directory under root holding files of a kind, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith((".dist-info", ".egg-info"))
                             and pathlib.Path(dirpath, d) not in other_roots)
        by_kind = collections.defaultdict(list)
        for name in sorted(filenames):
            path = pathlib.Path(dirpath) / name
            kind = kind_of(path)
            if kind and not path.is_symlink() and 0 < path.stat().st_size <= max_file_bytes:
                by_kind[kind].append(path)
        for kind, files in sorted(by_kind.items()):
            yield pathlib.Path(dirpath), kind, files


def read_text(path: pathlib.Path, max_bytes: int) -> str | None:
    try:
        raw = gzip.open(path).read(max_bytes + 1) if path.suffix == ".gz" else path.read_bytes()
        return None if len(raw) > max_bytes else raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError):
        return None


def looks_generated(text: str) -> bool:
    lines = text.splitlines() or [""]
    return max(map(len, lines)) > LONGEST_LINE or len(text) / len(lines) > LONGEST_MEAN_LINE


class Writer:
    """Spreads documents over ``files`` JSONL files and counts them per kind and per root."""

    def __init__(self, out: pathlib.Path, files: int):
        (out / "corpus").mkdir(parents=True, exist_ok=True)
        self.files = [open(out / "corpus" / f"part-{i:03d}.jsonl", "w") for i in range(files)]
        self.documents = self.bytes = 0
        self.kinds = collections.defaultdict(collections.Counter)
        self.roots = collections.defaultdict(collections.Counter)

    def write(self, pieces: list[str], group: str, kind: str, root: str) -> int:
        text = "".join(pieces)
        self.files[self.documents % len(self.files)].write(json.dumps({"text": text, "group": group, "kind": kind})
                                                           + "\n")
        for counts in (self.kinds[kind], self.roots[root]):
            counts.update(documents=1, files=len(pieces), bytes=len(text))
        self.documents, self.bytes = self.documents + 1, self.bytes + len(text)
        return len(text)

    def close(self):
        for f in self.files:
            f.close()


def stage(roots: list[pathlib.Path], out: pathlib.Path, *, max_mb: float, doc_mb: float = 0.5,
          max_file_mb: float = 1.0, package_mb: float = 48, files: int = 64, seed: int = 0) -> dict:
    """Writes out/corpus/part-*.jsonl; returns the report (documents, files and bytes per kind and per root)."""
    max_file, doc_bytes, budget = int(max_file_mb * 2**20), int(doc_mb * 2**20), int(max_mb * 2**20)
    todo = [(root, *u) for root in roots for u in units(root, [r for r in roots if r != root], max_file)]
    random.Random(seed).shuffle(todo)
    writer, seen, per_package, left_out = Writer(out, files), set(), collections.Counter(), collections.Counter()
    for root, directory, kind, paths in todo:
        package = (root, directory.relative_to(root).parts[:1])
        if writer.bytes >= budget or per_package[package] >= package_mb * 2**20:
            left_out["directories past --max_mb" if writer.bytes >= budget else "directories past --package_mb"] += 1
            continue
        group, pieces, size = f"{root}/{directory.relative_to(root)}", [], 0
        for path in paths:
            text = read_text(path, max_file)
            digest = hashlib.sha1(text.encode()).digest() if text is not None else None
            reason = ("files not UTF-8 or too large" if text is None else
                      "files already staged (the same bytes)" if digest in seen else
                      "files that look generated (long lines)" if looks_generated(text) else None)
            if reason:
                left_out[reason] += 1
                continue
            seen.add(digest)
            pieces.append(f"# file: {path.relative_to(root)}\n{text}\n")
            size += len(pieces[-1])
            if size >= doc_bytes:
                per_package[package] += writer.write(pieces, group, kind, str(root))
                pieces, size = [], 0
        if pieces:
            per_package[package] += writer.write(pieces, group, kind, str(root))
    writer.close()
    return {"documents": writer.documents, "bytes": writer.bytes, "roots": [str(r) for r in roots],
            "kinds": {k: dict(v) for k, v in sorted(writer.kinds.items())},
            "per_root": {k: dict(v) for k, v in sorted(writer.roots.items())}, "left_out": dict(left_out)}


def check_tokenizer(tokenizer_json: pathlib.Path, corpus: pathlib.Path, sample_bytes: int = 1 << 20) -> dict:
    """Per kind, on up to ``sample_bytes`` of its documents: the share of unknown tokens, whether decoding gives
    the text back exactly, and characters per token (how well a vocabulary fitted to Python suits it)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    unk = json.loads(tok.to_str())["model"].get("unk_token")
    unk_id = tok.token_to_id(unk) if unk else None
    samples = collections.defaultdict(list)
    for path in sorted(corpus.glob("*.jsonl")):
        for line in path.open():
            record = json.loads(line)
            if sum(map(len, samples[record["kind"]])) < sample_bytes:
                samples[record["kind"]].append(record["text"][:sample_bytes // 4])
    checks = {}
    for kind, texts in sorted(samples.items()):
        encodings = tok.encode_batch(texts, add_special_tokens=False)
        tokens = sum(len(e.ids) for e in encodings)
        unknown = sum(e.ids.count(unk_id) for e in encodings) if unk_id is not None else 0
        exact = all(tok.decode(e.ids, skip_special_tokens=False) == t for e, t in zip(encodings, texts))
        checks[kind] = {"characters": sum(map(len, texts)), "tokens": tokens, "unknown_rate": unknown / max(tokens, 1),
                        "exact_round_trip": exact, "characters_per_token": sum(map(len, texts)) / max(tokens, 1)}
    return {"tokenizer": str(tokenizer_json), "unknown_token": unk, "per_kind": checks}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer", default=str(pathlib.Path(__file__).parents[1] / "drope_small" / "tokenizer"),
                        help="the tokenizer directory to copy (tokenizer.json, tokenizer_config.json)")
    parser.add_argument("--max_mb", type=float, default=1200, help="stop after this much text")
    parser.add_argument("--doc_mb", type=float, default=0.5, help="cut a directory's text into documents this large")
    parser.add_argument("--max_file_mb", type=float, default=1.0, help="leave larger files out (generated tables)")
    parser.add_argument("--package_mb", type=float, default=48,
                        help="at most this much text from one top-level package or folder of a root")
    parser.add_argument("--files", type=int, default=64, help="JSONL files to spread the documents over")
    parser.add_argument("--seed", type=int, default=0, help="the order in which directories are taken")
    parser.add_argument("--roots", default="", help="comma-separated folders to walk instead of this machine's")
    parser.add_argument("--check_mb", type=float, default=1.0, help="text per kind for the tokenizer's check")
    args = parser.parse_args()

    out = pathlib.Path(args.out)
    roots = [pathlib.Path(r).resolve() for r in args.roots.split(",") if r] or default_roots()
    report = stage(roots, out, max_mb=args.max_mb, doc_mb=args.doc_mb, max_file_mb=args.max_file_mb,
                   package_mb=args.package_mb, files=args.files, seed=args.seed)
    (out / "tokenizer").mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(pathlib.Path(args.tokenizer) / name, out / "tokenizer" / name)
    report["tokenizer_check"] = check_tokenizer(out / "tokenizer" / "tokenizer.json", out / "corpus",
                                                int(args.check_mb * 2**20))
    (out / "stage_report.json").write_text(json.dumps(report, indent=1))
    print(f"staged {report['documents']:,} documents, {report['bytes'] / 2**20:,.1f} MiB from {len(roots)} roots "
          f"-> {out / 'corpus'}; tokenizer {args.tokenizer} -> {out / 'tokenizer'}")
    print(f"{'kind':<18} {'documents':>9} {'files':>7} {'MiB':>8} {'chars/token':>11} {'unknown':>8} round trip")
    checks = report["tokenizer_check"]["per_kind"]
    for kind, c in report["kinds"].items():
        t = checks.get(kind, {})
        print(f"{kind:<18} {c['documents']:>9,} {c['files']:>7,} {c['bytes'] / 2**20:>8,.1f} "
              f"{t.get('characters_per_token', 0):>11.2f} {t.get('unknown_rate', 0):>8.2%} {t.get('exact_round_trip')}")
    for root, c in report["per_root"].items():
        print(f"  {root}: {c['documents']:,} documents, {c['bytes'] / 2**20:,.1f} MiB")
    print("left out: " + ", ".join(f"{n:,} {why}" for why, n in sorted(report["left_out"].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
