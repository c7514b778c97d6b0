"""What the repo keeps of a training run: its checkpoint without Adam's state.

    python -m export.release runs/X/ckpt.pt export/checkpoints/default.pt

A run's ``ckpt.pt`` holds Adam's two moments beside the weights (three times their size); a
later run resumes without them (``--resume`` warms a fresh optimizer up). The weights stay fp32,
unlike ``weights.pt`` (fp16, for the device tool's 16 MiB a file), and the step, the run's
settings and the rung means of ``--balance_rungs`` are kept, so a resumed run goes on as this one.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch


def keep(ckpt: str | Path, out: str | Path) -> dict:
    """Write ``ckpt`` to ``out`` without its optimizer state; return what was written."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:  # torch's messages run to many lines
        raise ValueError(f"{ckpt}: not a checkpoint of export/train.py ({type(e).__name__})") from e
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise ValueError(f"{ckpt}: not a checkpoint of export/train.py (no model and model_config)")
    state.pop("optimizer", None)
    out = Path(out)
    tmp = out.with_suffix(".tmp")  # a reader of ``out`` never sees half a file
    torch.save(state, tmp)
    tmp.replace(out)
    return state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.release", description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="a run's ckpt.pt")
    p.add_argument("out", help="where to write it without Adam's state, e.g. export/checkpoints/default.pt")
    a = p.parse_args(argv)
    try:
        state = keep(a.ckpt, a.out)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"export.release: {e}", file=sys.stderr)
        return 1
    kept = ", ".join(k for k in state if k != "model")
    print(f"wrote {a.out}: step {state.get('step')}, {Path(a.out).stat().st_size / 2**20:.1f} MiB (model, {kept})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
