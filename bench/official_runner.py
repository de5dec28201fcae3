"""Times a user-supplied checkout of the OFFICIAL ARMT code, in its own Python (transformers <= 4.51).

Run by `bench_forward --official PATH --official-python PY` as a child process:

    PY bench/official_runner.py --official PATH --layers 4 --d 128 --heads 4 --vocab 128 --S 128 --M 16 \
        --d-mem 64 --tokens 8192 --threads 1 [--device cuda --dtype bfloat16]

It imports `modeling_amt.language_modeling` from PATH (never copied into this repository), builds a random
GPT-2 of the same shape, wraps it as the official scripts do (`AssociativeMemoryCell(base, num_mem_tokens=M,
d_mem=..., layers_attr="transformer.h", wrap_pos=False)`, then `AssociativeRecurrentWrapper(cell,
segment_size=S, k2=-1)`), and then serves timing requests on stdin, one per line, so that the caller can
alternate them with its own timings:

    run     -> one forward over the whole input under no_grad; prints {"seconds": t}
    quit    -> exit

Its first line of output is {"ready": true, "transformers": version}, or {"error": message} on failure (exit 2).
Only the standard library, torch and transformers of that Python are used here. On a GPU (`--device cuda`) each
timing ends with a device synchronisation; `--dtype bfloat16` runs the forward under bf16 autocast, as the
official training scripts do (its memory state stays float32).

The official modeling file imports `wandb` at the top and never calls it (the one use is commented out); where
wandb is not installed, an empty stand-in module is registered so that the import succeeds.

The child gets its own environment, not ours: our PYTHONPATH is dropped. ARMT_OFFICIAL_PYTHONPATH, when set, is
its PYTHONPATH (for an environment installed with `pip install --target DIR`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _reply(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--official", required=True)
    for k in ("layers", "d", "heads", "vocab", "S", "M", "d-mem", "tokens", "threads"):
        p.add_argument(f"--{k}", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = p.parse_args(argv)
    try:
        import contextlib
        import importlib.machinery
        import importlib.util
        import types

        import torch
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel  # resolved before any stand-in module exists
        if importlib.util.find_spec("wandb") is None:  # imported by the official file, never called (docstring)
            stub = types.ModuleType("wandb")
            stub.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
            sys.modules["wandb"] = stub
        sys.path.insert(0, a.official)
        from modeling_amt.language_modeling import AssociativeMemoryCell, AssociativeRecurrentWrapper
    except Exception as e:  # noqa: BLE001 -- reported to the parent as one clear line
        _reply({"error": f"cannot import the official code from {a.official!r} with {sys.executable}: "
                         f"{type(e).__name__}: {e}"})
        return 2
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    hf = GPT2Config(n_layer=a.layers, n_embd=a.d, n_head=a.heads, vocab_size=a.vocab,
                                 n_positions=max(1024, a.S + a.M), bos_token_id=0, eos_token_id=0)
    base = GPT2LMHeadModel(hf)
    cell = AssociativeMemoryCell(base, num_mem_tokens=a.M, d_mem=a.d_mem, layers_attr="transformer.h", wrap_pos=False)
    model = AssociativeRecurrentWrapper(cell, segment_size=a.S, k2=-1).to(a.device).eval()
    ids = torch.randint(0, a.vocab, (1, a.tokens), device=a.device)
    mask = torch.ones_like(ids)
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    amp = (torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16) if a.dtype == "bfloat16"
           else contextlib.nullcontext())

    def forward():
        with torch.no_grad(), amp:
            out = model(input_ids=ids, attention_mask=mask)
        del out
        sync()
    forward()  # warm-up
    _reply({"ready": True, "transformers": transformers.__version__, "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if cuda else "cpu"})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "run":
            _reply({"error": f"unknown command {cmd!r} (expected run or quit)"})
            continue
        sync()
        t = time.perf_counter()
        forward()
        _reply({"seconds": time.perf_counter() - t})
    return 0


class OfficialProcess:
    """The caller's side (this repository's Python): starts the runner in `python`, then `time()` asks it for
    one timed forward. Raises ValueError with what is wrong if PATH or the Python is missing or the import fails."""

    def __init__(self, path, python, *, layers, d, heads, vocab, S, M, d_mem, tokens, threads, device="cpu",
                 dtype="float32", timeout=600):
        import os
        import subprocess
        from pathlib import Path

        path, python = Path(path), str(python)
        if not (path / "modeling_amt" / "language_modeling.py").is_file():
            raise ValueError(f"--official {str(path)!r}: no modeling_amt/language_modeling.py there; pass the root of "
                             "a checkout of the official ARMT code (RodkinIvan/associative-recurrent-memory-transformer)")
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise ValueError(f"--official-python {python!r} is not an executable file; pass the python of an "
                             "environment with torch and transformers <= 4.51 (the official code's range)")
        args = dict(layers=layers, d=d, heads=heads, vocab=vocab, S=S, M=M, tokens=tokens, threads=threads)
        cmd = [python, str(Path(__file__).resolve()), "--official", str(path), "--d-mem", str(d_mem),
               "--device", str(device), "--dtype", dtype]
        for k, v in args.items():
            cmd += [f"--{k}", str(v)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # its own environment, not ours
        if os.environ.get("ARMT_OFFICIAL_PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["ARMT_OFFICIAL_PYTHONPATH"]
        env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        first = self._read()
        if "error" in first or not first.get("ready"):
            err = first.get("error") or self.proc.stderr.read()[-2000:]
            self.close()
            raise ValueError(f"the official code did not start: {err}")
        self.versions = {k: first.get(k) for k in ("transformers", "torch", "device")}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()[-2000:]
            raise ValueError(f"the official runner exited (code {self.proc.wait()}): {err.strip() or 'no output'}")
        return json.loads(line)

    def time(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "seconds" not in reply:
            raise ValueError(f"the official runner answered {reply}")
        return float(reply["seconds"])

    def paired(self, run_ref, sync, reps: int = 3) -> tuple[float, float]:
        """(best official time, best reference time) over `reps` alternations of one official forward and one
        `run_ref()` (followed by `sync()`), so that load changes during the run hit both sides alike."""
        import time

        t_off = t_ref = float("inf")
        for _ in range(reps):
            sync()
            t = time.perf_counter()
            run_ref()
            sync()
            t_ref = min(t_ref, time.perf_counter() - t)
            t_off = min(t_off, self.time())
        return t_off, t_ref

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 -- a dead pipe: stop it
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
