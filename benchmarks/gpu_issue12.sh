#!/usr/bin/env bash
# Issue 12's GPU figures in one run, most important first, each step bounded by `timeout` and
# the whole by a 8.5-minute budget; logs in OUT, a compact summary at the end.
#   PYTHONPATH=$PWD CNNBENCH_DATA=$PWD/.fmnist bash benchmarks/gpu_issue12.sh OUT
#   bash benchmarks/gpu_issue12.sh --dry OUT   # on a CPU: every step, tiny, as a syntax check
set -u
DRY=0
if [ "${1:-}" = "--dry" ]; then DRY=1; shift; fi
OUT=${1:?usage: gpu_issue12.sh [--dry] OUT}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-510}  # seconds for all steps (the lead's limit is 9 minutes)
export CNNBENCH_SCENES_CACHE=${CNNBENCH_SCENES_CACHE:-/tmp/cnnbench-scenes}
START=$SECONDS

# step NAME CAP COMMAND...: run with at most CAP seconds (less when the budget runs short).
step() {
    local name=$1 cap=$2; shift 2
    local left=$((BUDGET - (SECONDS - START)))
    [ "$left" -lt "$cap" ] && cap=$left
    if [ "$cap" -lt 20 ]; then echo "skip $name (budget spent)" | tee -a "$OUT/summary.txt"; return; fi
    echo "== $name (<= ${cap}s): $*" >&2
    local t0=$SECONDS
    timeout "$cap" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - t0))s" >> "$OUT/steps.txt"
}

if [ "$DRY" = 1 ]; then
    DEV=cpu; LIMIT=(--limit 256); ROUNDS=1; STEPS=(--steps 2 --warmup 1 --scenes 100)
    TRAIN=(--limit 256 --epochs 1 --device cpu); SCENES=(--set scenes=100 --set val_size=20)
    PROFILED=2
else
    DEV=cuda; LIMIT=(); ROUNDS=3; STEPS=(--steps 200 --warmup 30 --scenes 2000)
    TRAIN=(--device cuda); SCENES=(); PROFILED=20
    $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" > "$OUT/device.txt" 2>&1
fi

# 1-2. trainer against the hand loop, LeNet's d2l recipe (eager, then CUDA graphs).
step overhead_eager 120 $PY benchmarks/trainer_overhead.py --device $DEV --no-d2l --threads 0 \
    --rounds $ROUNDS "${LIMIT[@]}"
step overhead_compiled 180 $PY benchmarks/trainer_overhead.py --device $DEV --no-d2l --threads 0 \
    --rounds $ROUNDS --compile reduce-overhead "${LIMIT[@]}"
# 3. throughput with the cuda profiles (resnet18 at 96 px, lenet, unet width 64).
step throughput 240 $PY benchmarks/throughput.py --device $DEV --models resnet18 lenet unet \
    "${STEPS[@]}" "${LIMIT[@]}"
# 3b. where a step's time goes (torch.profiler: host and device ms per part, a trace each).
step profile 150 $PY benchmarks/throughput.py --device $DEV --models lenet resnet18 \
    "${STEPS[@]}" "${LIMIT[@]}" --profile "$OUT/profile" --profile-steps $PROFILED
# 4-5. end to end with the default GPU recipe.
step train_resnet18 200 $PY -m cnnbench train resnet18 "${TRAIN[@]}" --quiet --json \
    --run-dir "$OUT/runs/resnet18"
step train_unet 240 $PY -m cnnbench train unet "${TRAIN[@]}" "${SCENES[@]}" --quiet --json \
    --run-dir "$OUT/runs/unet"
# What a GPU run would train (no GPU needed).
$PY -m cnnbench train unet --device cuda --dry-run > "$OUT/unet_cuda_recipe.yaml" 2>&1
rm -rf "$OUT"/runs/*/checkpoints "$OUT"/runs/*/tensorboard  # keep what comes back small
[ -d "$OUT/runs" ] && $PY benchmarks/results_md.py "$OUT/runs" > "$OUT/results.md" 2>&1

$PY - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def last_json(name):
    """The last JSON object in a log (one line, or printed with indent)."""
    path = out / f"{name}.log"
    text = path.read_text() if path.exists() else ""
    found, i = None, text.find("{")
    while i >= 0:
        if i == 0 or text[i - 1] == "\n":
            try:
                found, end = json.JSONDecoder().raw_decode(text, i)
                i = end - 1
            except ValueError:
                pass
        i = text.find("{", i + 1)
    return found
print("summary", (out / "device.txt").read_text().strip() if (out / "device.txt").exists() else "(dry)")
print((out / "steps.txt").read_text().strip() if (out / "steps.txt").exists() else "")
for name in ("overhead_eager", "overhead_compiled"):
    r = last_json(name)
    if r:
        ips = r["images_per_second"]
        print(f"{name}: trainer/hand {r['cnnbench_over_hand']:.3f}  trainer {ips['cnnbench']:,.0f} "
              f"img/s  hand {ips['hand']:,.0f} img/s  seconds {r['seconds']}")
log = out / "throughput.log"
for line in (log.read_text().splitlines() if log.exists() else []):
    if line.startswith("{"):
        r = json.loads(line)
        print(f"throughput {r['model']}: " + (r.get("error") or
              f"{r['images_per_second']:,.0f} img/s (batch {r['batch_size']}, {r['amp']}, "
              f"compile {r['compile']}, warm-up {r['warmup_seconds']:.0f}s)"))
for name in ("train_resnet18", "train_unet"):
    r = last_json(name)
    if r:
        tests = {k: round(v, 4) for k, v in r.items() if k.startswith("test_") and isinstance(v, float)}
        print(f"{name}: {tests} train_seconds {r.get('train_seconds')} "
              f"img/s {r.get('images_per_second')}")
    elif (out / f"{name}.log").exists():
        print(f"{name}: no results; log tail: " + " | ".join((out / f"{name}.log").read_text().splitlines()[-3:]))
PY
