#!/usr/bin/env bash
# One GPU session's measurements, in one command, for a lent GPU machine that reaches no package
# index (see DEVELOPERS.md / the device tool): run from the repository root as
#
#     OUT=/some/folder bash benchmarks/gpu_session.sh            # every step, ~9 minutes (estimate)
#     STEPS="tests timer lut fidelity" OUT=... bash benchmarks/gpu_session.sh   # a subset: split the
#     STEPS="fps throughput backends"  OUT=... bash benchmarks/gpu_session.sh   # work over two calls
#
# Steps share .gpu-work/ (git-ignored), so a later call on the same warm machine finds the LUT.
# It installs this checkout without dependencies (the machine brings torch + CUDA, Triton, pandas,
# pyarrow, click, onnx, onnxruntime, rich, matplotlib, pynvml; anything else must travel as wheels
# in .whl/, installed first if present), then runs the GPU tests and every GPU benchmark and packs
# the results into $OUT/gpu-results.tgz (plus the logs), to be committed under
# benchmarks/results/ with the card's name and the date. It never changes GPU settings.
#
# Status: written without a GPU (no session so far was lent one); the CPU parts of every step are
# tested, the GPU paths are not yet.
set -u
OUT=${OUT:-gpu-results}
RES=${RES:-769x1537}
mkdir -p "$OUT"
STEPS=${STEPS:-"tests timer lut fidelity fps throughput backends"}
WORK=.gpu-work
mkdir -p "$WORK"
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
export PYTHONUNBUFFERED=1
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/session.log"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/session.log" 2>&1 || { log "install failed"; exit 1; }

CARD=$(python3 -c "import torch; n=torch.cuda.get_device_name(0).lower(); print(''.join(c if c.isalnum() else '-' for c in n).strip('-'))")
DATE=$(date -u +%Y%m%d)
log "card $CARD, date $DATE, resolution $RES"
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv;
  python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'python', sys.version.split()[0])"; } \
  >"$OUT/env.txt" 2>&1

if has tests; then log "GPU tests"
python3 -m pytest -q -m "gpu or trt" -p no:cacheprovider >"$OUT/gpu-tests.log" 2>&1; log "gpu tests rc=$?"; fi

R="$WORK/results"; mkdir -p "$R"
if has timer; then log "timer agreement (latbench vs triton.testing.do_bench)"
timeout 120 python3 benchmarks/timer_agreement.py --device cuda:0 --resolution "$RES" --output-dir "$R" >>"$OUT/session.log" 2>&1; log "rc=$?"; fi

LUT="$R/$CARD-cudagraph-$DATE.parquet"
if has lut; then log "LUT build, cudagraph, $RES"
timeout 240 latbench build-lut --gpu "$CARD" --backend cudagraph --resolution "$RES" --max-time 2 \
  --output "$LUT" --no-progress --json >"$R/build-$CARD.json" 2>>"$OUT/session.log"; log "rc=$?"
latbench show "$LUT" --json >"$R/show-$CARD.json" 2>>"$OUT/session.log"; fi

if has fidelity; then log "LUT fidelity, 50 sampled architectures"
timeout 180 python3 benchmarks/lut_fidelity.py "$LUT" --samples 50 --out-dir "$R" >>"$OUT/session.log" 2>&1; log "rc=$?"; fi

if has fps; then log "nas fps eager vs cudagraph vs compile"
python3 - "$WORK/g.json" <<'PY'
import random, sys
from nas.config import SpaceConfig
from nas.genotype import Architecture, Genotype
from nas.space import LGCNetSpace
cfg = SpaceConfig()
Genotype(Architecture.from_dict(LGCNetSpace(cfg).sample_architecture(random.Random(0))), cfg,
         {"note": "uniformly sampled (seed 0) for the GPU session's FPS figures"}).save(sys.argv[1])
PY
timeout 180 nas fps --arch "$WORK/g.json" --gpu "$CARD" --resolution "$RES" --backend eager,cudagraph,compile \
  --lut "$LUT" --reports "$R/reports" --json >"$R/fps-$CARD.json" 2>>"$OUT/session.log"; log "rc=$?"; fi

if has throughput; then log "search throughput"
timeout 90 python3 benchmarks/search_throughput.py --device cuda --out-dir "$R" >>"$OUT/session.log" 2>&1; log "rc=$?"; fi

if has backends; then log "whole networks: eager vs cudagraph vs compile (2 archs)"
timeout 240 python3 benchmarks/backends_whole_network.py --device cuda:0 --resolution "$RES" --archs 2 \
  --out-dir "$R" >>"$OUT/session.log" 2>&1; log "rc=$?"; fi

tar -C "$WORK" -czf "$OUT/gpu-results.tgz" results
log "done: $OUT/gpu-results.tgz"
