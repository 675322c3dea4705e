"""``emotion-export``: build checkpoints, export ONNX model repositories, verify them against FunASR."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from emotion2vec_serving.modelrepo import load_manifest

__all__ = ["main"]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _checkpoint(args: argparse.Namespace) -> int:
    from emotion2vec_serving.export.checkpoint import write_checkpoint

    started = time.perf_counter()
    _say(f"writing {args.size} checkpoint (seed {args.seed}, random weights) to {args.out}")
    out = write_checkpoint(args.out, size=args.size, seed=args.seed, headless=args.headless)
    _say(f"done in {time.perf_counter() - started:.1f} s")
    print(out)
    return 0


def _onnx(args: argparse.Namespace) -> int:
    from emotion2vec_serving.export.onnx_export import export_repository

    started = time.perf_counter()
    repo = export_repository(args.source, args.out, precision=args.precision, verify=not args.no_verify,
                             progress=_say, revision=args.revision, hub=args.hub,
                             require_labels=args.require_labels, front_end_chunk_s=args.front_end_chunk_s,
                             attention_chunk_rows=args.attention_chunk_rows)
    if args.triton_layout is not None:
        from emotion2vec_serving.export.triton import write_triton_layout

        _say(f"Triton layout: {write_triton_layout(repo, args.triton_layout)}")
    manifest = load_manifest(repo)
    sizes = {p.name: p.stat().st_size for p in sorted(repo.iterdir())}
    _say(f"done in {time.perf_counter() - started:.1f} s: {repo} " +
         ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))
    record = manifest.to_json()
    print(json.dumps({"repo": str(repo), "deviation_from_fp32": record["deviation_from_fp32"],
                      "parity": record["parity"]}, indent=2))
    return 0


def _download(args: argparse.Namespace) -> int:
    from emotion2vec_serving.export.download import DownloadError, DownloadSettings, download_model

    started = time.perf_counter()
    try:
        directory = download_model(args.model_id, revision=args.revision, hub=args.hub, out=args.out,
                                   settings=DownloadSettings(timeout_s=args.timeout_s), progress=_say,
                                   require_labels=args.require_labels)
    except DownloadError as exc:
        _say(f"error: {exc}")
        return 1
    _say(f"done in {time.perf_counter() - started:.1f} s")
    print(directory)
    return 0


def _require(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _verify(args: argparse.Namespace) -> int:
    from emotion2vec_serving.export.verify import ParityError, verify_repository

    precision = load_manifest(args.repo).precision
    tolerance = args.tolerance if precision == "fp32" else None
    try:
        report = verify_repository(args.source, args.repo, tolerance=tolerance, progress=_say)
    except ParityError as exc:
        _say(f"PARITY FAILED: {exc}")
        return 1
    print(json.dumps(report.to_json(), indent=2))
    _say("parity OK" if tolerance is not None else f"{precision}: maxima reported (no tolerance applied)")
    return 0


def _triton(args: argparse.Namespace) -> int:
    from emotion2vec_serving.export.triton import write_triton_layout

    print(write_triton_layout(args.repo, args.out, name=args.name, max_batch_size=args.max_batch_size))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from emotion2vec_serving.export.demo import ensure_demo_repo

    repo = ensure_demo_repo(Path(args.out), progress=_say)
    print(repo)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emotion-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("checkpoint", help="write a random-weight checkpoint in the real emotion2vec layout")
    # The names of export.checkpoint.SIZES (that module imports torch: not for --help).
    p.add_argument("--size", choices=["tiny", "odd", "base", "large"], default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--headless", action="store_true",
                   help="emotion2vec_base layout: emotion2vec_base.pt, no tokens.txt, no head")
    p.set_defaults(func=_checkpoint)

    p = sub.add_parser("onnx", help="export a checkpoint directory or model id to an ONNX model repository")
    p.add_argument("--source", required=True,
                   help="checkpoint directory or model id (e.g. emotion2vec_plus_large)")
    p.add_argument("--out", required=True, type=Path, help="model repository directory to write")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8", "int8_dynamic"], default="fp32",
                   help="int8: batch-exact row-wise int8; int8_dynamic: per-tensor dynamic int8, whose "
                   "answers depend on batch mates (comparison only)")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check against FunASR")
    p.add_argument("--revision", default=None,
                   help="hub revision of a model id (default: the pinned one, export/download.py)")
    p.add_argument("--hub", choices=["hf", "ms", "huggingface", "modelscope"], default=None,
                   help="hub of a model id (default: the pinned one, export/download.py)")
    p.add_argument("--require-labels", type=_require, default=None, metavar="N",
                   help="refuse a model that enables fewer than N labels (9: every emotion2vec+ emotion)")
    p.add_argument("--front-end-chunk-s", type=float, default=2.0, metavar="S",
                   help="run the convolutional front end over S-second chunks of the waveform (same "
                   "outputs; its memory follows the chunk, not the longest clip); 0: whole rows")
    p.add_argument("--attention-chunk-rows", type=int, default=None, metavar="N",
                   help="run an attention of more than N query rows (50 per audio second) over chunks of "
                   "at most N (same outputs; its scores' memory follows the chunk instead of the clip's "
                   "length squared); 0: whole; default 256, whole for fp16 (the GPU precision)")
    p.add_argument("--triton-layout", type=Path, default=None, metavar="DIR",
                   help="also write a Triton model directory DIR/<name>/1/model.onnx + config.pbtxt")
    p.set_defaults(func=_onnx)

    p = sub.add_parser("download", help="download a model id (verified, resumable) and print its directory")
    p.add_argument("model_id", help="emotion2vec_plus_large|base|seed, emotion2vec_base, or owner/name")
    p.add_argument("--out", type=Path, default=None,
                   help="also place the files in DIR (no cache links: copy DIR to an offline machine and "
                   "pass it as --source or --model); default: print the cache directory")
    p.add_argument("--hub", choices=["hf", "ms", "huggingface", "modelscope"], default=None,
                   help="hf (Hugging Face) or ms (ModelScope); default: the pinned hub of the model id")
    p.add_argument("--revision", default=None,
                   help="branch, tag or commit (default: the pinned one, export/download.py)")
    p.add_argument("--require-labels", type=_require, default=None, metavar="N",
                   help="refuse a model that enables fewer than N labels (9: every emotion2vec+ emotion)")
    p.add_argument("--timeout-s", type=float, default=60.0,
                   help="stall timeout: no byte for this long abandons a connection (then resumed); "
                   "nothing bounds a download that keeps moving")
    p.set_defaults(func=_download)

    p = sub.add_parser("triton", help="write a Triton model directory from an exported model repository")
    p.add_argument("--repo", required=True, type=Path, help="model repository (manifest.json, model.onnx)")
    p.add_argument("--out", required=True, type=Path, help="Triton model repository root to write into")
    p.add_argument("--name", default=None, help="model name in Triton (default: the manifest's model name)")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.set_defaults(func=_triton)

    p = sub.add_parser("verify", help="check a model repository against FunASR on the same checkpoint")
    p.add_argument("--source", required=True, type=Path, help="checkpoint directory")
    p.add_argument("--repo", required=True, type=Path, help="model repository directory")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.set_defaults(func=_verify)

    p = sub.add_parser("demo", help="build the tiny random demo model repository (idempotent)")
    p.add_argument("--out", required=True, type=Path,
                   help="the model repository to write (emotion-server --model DIR serves it)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``emotion-export`` and ``python -m export.cli``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # CheckpointError and bad arguments: a message, not a traceback
        _say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
