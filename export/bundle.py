"""Export a trained checkpoint as a model bundle: three ONNX graphs, entropy tables, a manifest.

    python -m export.bundle runs/cpu/ckpt.pt codec/models/default

Graphs (dynamic height and width, checked with onnx.checker):
- encoder.onnx        x (1,3,H,W) in [0,1], gain (1,M,1,1)  → y (1,M,H/16,W/16), z (1,N,H/64,W/64)
- hyper_decoder.onnx  z_hat                                  → mu, sigma (1,M,H/16,W/16)
- decoder.onnx        y_hat, inv_gain (1,M,1,1)              → x_hat (1,3,H,W)

tables.npz holds the gain ladder and the integer entropy tables; manifest.json
lists every file with its SHA-256, and the model id is the hash of that list.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from export import tables
from export.model import SCALE_MIN, Onic
from export.train import load_model

OPSET = 17
BUNDLE_FORMAT = 1


class Encoder(nn.Module):
    def __init__(self, m: Onic):
        super().__init__()
        self.g_a, self.h_a = m.g_a, m.h_a

    def forward(self, x: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.g_a(x) * gain
        return y, self.h_a(y)


class HyperDecoder(nn.Module):
    def __init__(self, m: Onic):
        super().__init__()
        self.h_s = m.h_s

    def forward(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, sigma = self.h_s(z_hat).chunk(2, dim=1)
        return mu, torch.clamp(sigma, min=SCALE_MIN)


class Decoder(nn.Module):
    def __init__(self, m: Onic):
        super().__init__()
        self.g_s = m.g_s

    def forward(self, y_hat: torch.Tensor, inv_gain: torch.Tensor) -> torch.Tensor:
        return self.g_s(y_hat * inv_gain)


def graphs(model: Onic) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], list[str], list[str]]]:
    """name → (module, example inputs, input names, output names)."""
    N, M = model.cfg.N, model.cfg.M
    gain = torch.ones(1, M, 1, 1)
    return {
        "encoder": (Encoder(model), (torch.rand(1, 3, 128, 192), gain), ["x", "gain"], ["y", "z"]),
        "hyper_decoder": (HyperDecoder(model), (torch.randn(1, N, 2, 3),), ["z_hat"], ["mu", "sigma"]),
        "decoder": (Decoder(model), (torch.randn(1, M, 8, 12), gain), ["y_hat", "inv_gain"], ["x_hat"]),
    }


def export_graph(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str], path: Path) -> None:
    spatial = {2: "height", 3: "width"}
    dynamic = {n: spatial for n in inputs + outputs if n not in ("gain", "inv_gain")}
    with warnings.catch_warnings():
        # dynamo=False is deprecated but still gives the plain Conv graphs we want, with dynamic axes.
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(
            module.eval(), args, str(path), input_names=inputs, output_names=outputs,
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def write_tables(model: Onic, path: Path) -> None:
    z_offsets, z_pmfs = tables.z_tables(model)
    z_values, z_starts = tables.pack_tables(z_pmfs)
    y_values, y_starts = tables.pack_tables(tables.gaussian_tables())
    with torch.no_grad():
        np.savez(
            path,
            log_gain=model.log_gain.numpy().astype(np.float32),
            log_inv_gain=model.log_inv_gain.numpy().astype(np.float32),
            lambdas=model.lambdas.numpy().astype(np.float64),
            z_offsets=z_offsets,
            z_values=z_values,
            z_starts=z_starts,
            scale_table=tables.SCALE_TABLE,
            y_values=y_values,
            y_starts=y_starts,
        )


def export_bundle(ckpt: str | Path, out: str | Path, name: str = "default") -> dict:
    """Write a complete bundle folder; returns its manifest."""
    model, ck = load_model(ckpt)
    model.eval()
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for graph, (module, args, inputs, outputs) in graphs(model).items():
            export_graph(module, args, inputs, outputs, tmp / f"{graph}.onnx")
        write_tables(model, tmp / "tables.npz")
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.iterdir())}
        model_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        manifest = {
            "bundle_format": BUNDLE_FORMAT,
            "name": name,
            "model_id": model_id,
            "architecture": "mean-scale hyperprior with gain units (Minnen 2018, Cui 2021)",
            "config": model.cfg.to_dict(),
            "stride": Onic.stride,
            "trained_steps": int(ck["step"]),
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for f in tmp.iterdir():
            shutil.copyfile(f, out / f.name)
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Export a checkpoint as an onic model bundle.")
    p.add_argument("checkpoint")
    p.add_argument("out", help="bundle folder to (re)write, e.g. codec/models/default")
    p.add_argument("--name", default="default")
    a = p.parse_args(argv)
    m = export_bundle(a.checkpoint, a.out, a.name)
    print(f"wrote {a.out}: model id {m['model_id']}, N={m['config']['N']} M={m['config']['M']}")


if __name__ == "__main__":
    main()
