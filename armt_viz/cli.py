"""`armt-viz` command line: parse arguments here and nowhere else, then call the library.

    armt-viz demo     record the shipped model on a long stream (cached) and serve the dashboard
    armt-viz record   record a trace of a model on a task stream
    armt-viz serve    serve the Panel dashboard over a trace root
    armt-viz train    train a small ARMT with a curriculum
    armt-viz eval     evaluate a model on a task, one JSON line
    armt-viz bench    run the benchmarks in bench/
    armt-viz study    stale-keys: the stale-key study (report.html, study.zarr, figures/*.png)

A user error (a bad value, a missing model folder, a run too large for the disk) prints one line
``armt-viz <command>: error: ...`` and exits 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys


def _int_or_auto(v: str):
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {v!r}") from None


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="armt-viz", description="Analysis and visualization of ARMT memory.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="record the shipped model on a long stream and serve the dashboard")
    d.add_argument("--tokens", type=int, default=None, help="stream length (default: the demo default)")
    d.add_argument("--trace-root", default="runs", help="folder for the demo trace (cached)")
    d.add_argument("--port", type=int, default=5006)
    d.add_argument("--address", default="127.0.0.1")
    d.add_argument("--no-serve", action="store_true", help="only record")

    r = sub.add_parser("record", help="record a trace")
    r.add_argument("--model", default="demo", help="'demo' or a folder written by save_pretrained")
    r.add_argument("--task", default="stream", choices=["stream", "ar-remember", "ar-rewrite"])
    r.add_argument("--tokens", type=_positive, default=100_000)
    r.add_argument("--store", required=True, help="output zarr store path")
    r.add_argument("--level", default="auto", choices=["auto", "summary", "writes", "full"],
                   help="'auto' (default): 'writes' when the estimated trace fits the size budget it prints, "
                        "else 'summary'")
    r.add_argument("--probes", default="queries", metavar="queries|every:N|none",
                   help="where to keep probe reads: at every query's GEN token (default), every N-th token, "
                        "or none")
    r.add_argument("--keyframe-every", type=_int_or_auto, default="auto",
                   help="segments between (A, z) keyframes, or 'auto' (64 unless the memory is large)")
    r.add_argument("--storage-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--resume", action="store_true")

    s = sub.add_parser("serve", help="serve the dashboard over a trace root")
    s.add_argument("--trace-root", required=True)
    s.add_argument("--port", type=int, default=5006)
    s.add_argument("--address", default="127.0.0.1")
    s.add_argument("--basic-auth", default=None, help="'user:password' or a path to a JSON {user: password} file")
    s.add_argument("--cookie-secret", default=None)
    s.add_argument("--show", action="store_true")

    t = sub.add_parser("train", help="train a small ARMT with a curriculum")
    t.add_argument("--task", default="ar-rewrite", choices=["ar-rewrite", "ar-remember", "stream", "mixed"])
    t.add_argument("--out", default="runs/train")
    t.add_argument("--smoke", action="store_true", help="tiny CPU run (< 2 min), used in tests")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--variant", default=None, choices=["baseline", "no-gamma", "gate", "half-dmem", "no-delta"],
                   help="stream specimen variant (task stream): same recipe, one ARMTConfig switch changed")
    t.add_argument("--curriculum", default=None, help="comma-separated pairs per stage, e.g. 1,2,3,5,10,20,50")
    t.add_argument("--steps", default=None, help="comma-separated steps per stage")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--device", default="auto")
    t.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--time-budget", type=float, default=None, help="stop (on a saved stage) after this many seconds")

    e = sub.add_parser("eval", help="evaluate a model on a task; prints one JSON line")
    e.add_argument("--model", default="demo")
    e.add_argument("--task", default="ar-rewrite", choices=["ar-remember", "ar-rewrite", "stream", "babi"])
    e.add_argument("--pairs", type=_positive, default=10,
                   help="AR: pairs n; stream: segments per stream; bAbI: facts per story")
    e.add_argument("--key-size", type=int, default=1)
    e.add_argument("--value-size", type=int, default=1)
    e.add_argument("--samples", type=_positive, default=500)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=_positive, default=250)
    e.add_argument("--device", default="auto")
    e.add_argument("--ablate-memory", action="store_true")
    e.add_argument("--json", action="store_true")

    st = sub.add_parser("study", help="run a study and write its report")
    st.add_argument("study", choices=["stale-keys"], help="which study")
    st.add_argument("--model", action="append", default=None,
                    help="'demo', 'specimens' (the five shipped stream specimens) or a save_pretrained folder, "
                         "optionally named NAME=FOLDER; repeat for several specimens (default: demo)")
    st.add_argument("--out", required=True, help="output folder (study.zarr, report.html, figures/)")
    size = st.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="CI-sized settings (minutes on 2 CPU cores)")
    size.add_argument("--medium", action="store_true", help="a 12k-token stream, long enough for the demo model "
                      "to degrade (5-13 min on 2 CPU cores)")
    st.add_argument("--scheduler", default=None, help="dask scheduler address; runs go to that cluster")
    st.add_argument("--no-png", action="store_true", help="skip the PNG copies of the figures")

    b = sub.add_parser("bench", help="run benchmarks (prints ratio tables)")
    b.add_argument("names", nargs="*", help="benchmarks to run (default: all CPU ones)")
    for command in sub.choices.values():  # `--debug` also after the command name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
    return p


_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                MemoryError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, MemoryError):
            text = f"out of memory ({text}); use a smaller run"
        sys.stderr.write(f"armt-viz {args.command}: error: {text} (--debug for the traceback)\n")
        return 2


def _run(args) -> int:
    kw = {k: v for k, v in vars(args).items() if k not in ("command", "debug")}
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(**kw) or 0
    if args.command == "record":
        from .record.run import run_record
        return run_record(**kw) or 0
    if args.command == "serve":
        from .viz.serve import run_serve
        return run_serve(**kw) or 0
    if args.command == "train":
        from .train import run_train
        return run_train(**kw) or 0
    if args.command == "eval":
        from .evaluate import run_eval
        result = run_eval(**kw, progress=True)
        out = json.dumps(result, sort_keys=True)
        sys.stdout.write(out + "\n") if args.json else sys.stdout.write(
            "\n".join(f"{k}: {v}" for k, v in result.items()) + "\n")
        return 0
    if args.command == "study":
        from .study import stale_keys_study
        stale_keys_study(args.model or ["demo"], args.out, small=args.small, medium=args.medium,
                         scheduler=args.scheduler, png=not args.no_png)
        sys.stdout.write(f"wrote {args.out}/report.html, {args.out}/study.zarr and {args.out}/figures/\n")
        return 0
    if args.command == "bench":
        import runpy
        runpy.run_module("bench.run_all", run_name="__main__")
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
