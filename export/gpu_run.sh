#!/usr/bin/env bash
# One prepared GPU training run (issue 7), for the device tool: resumes the shipped
# checkpoint, trains for $MINUTES, evaluates on Kodak with the real range coder and
# leaves the log, eval.jsonl and the new weights in $OUT.
#
# Prepare here (all ignored by git; they travel with `carry`):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl constriction==0.5.0
#   mkdir -p data/train data/kodak && cp ../shared/data/kodak/kodim0[1-4].png data/kodak/
#   ls ../shared/data/train/*.jpg | sort | awk 'NR % 4 == 0' | head -n 350 | xargs cp -t data/train/  # about 35 MiB
# Then: run(command="MINUTES=8 bash export/gpu_run.sh", carry=[".whl", "data"], timeout_s=600)
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m export.train --device cuda --data data/train --kodak data/kodak --eval_images 4 \
    --resume "${RESUME:-export/checkpoints/default.pt}" --crop 256 --batch_size "${BATCH:-64}" --lr "${LR:-4e-4}" \
    --warmup_steps 100 --bf16 1 --channels_last 1 --compile "${COMPILE:-1}" --max_minutes "${MINUTES:-8}" \
    --eval_every "${EVAL_EVERY:-2000}" --log_every 100 --out "$OUT/run" 2>&1 | tee "$OUT/train.log"
python3 - <<'PY'
import os
from export.train import load_model, save_weights
model, ck = load_model(os.path.join(os.environ["OUT"], "run", "ckpt.pt"))
save_weights(os.path.join(os.environ["OUT"], "default.pt"), model, ck["step"])
PY
cp "$OUT/run/eval.jsonl" "$OUT/eval.jsonl" 2>/dev/null || true
rm -rf "$OUT/run"
