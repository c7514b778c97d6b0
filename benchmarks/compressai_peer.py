"""CompressAI's MeanScaleHyperprior of onic's size (random weights), timed; run by a Python that has compressai.

    ../caivenv/bin/python benchmarks/compressai_peer.py N M WIDTH HEIGHT REPEAT [THREADS]   # one JSON line

codec/speed.py runs it in CompressAI's own venv (torch 2.14, numpy<2); onic never imports it.
"""

import json
import statistics
import sys
import time

import compressai
import torch
from compressai.models import MeanScaleHyperprior


def median_ms(fn, repeat: int) -> float:
    # The same measurement as codec/speed.py's median_ms, repeated on purpose: this script runs
    # in CompressAI's venv, where onic (and onnxruntime) are not installed.
    fn()  # burn-in
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    n, m, w, h, repeat = (int(v) for v in sys.argv[1:6])
    if len(sys.argv) > 6 and int(sys.argv[6]):  # torch's threads, as onic's --threads (0: torch's default)
        torch.set_num_threads(int(sys.argv[6]))
    torch.manual_seed(0)
    net = MeanScaleHyperprior(n, m).eval()
    net.update(force=True)
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        out = net.compress(x)
        enc = median_ms(lambda: net.compress(x), repeat)
        dec = median_ms(lambda: net.decompress(out["strings"], out["shape"]), repeat)
    print(json.dumps({"encode_ms": enc, "decode_ms": dec, "torch": torch.__version__,
                      "compressai": compressai.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
