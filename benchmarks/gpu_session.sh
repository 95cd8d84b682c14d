#!/usr/bin/env bash
# The GPU measurements of one lent GPU machine, as short steps that each write their results into
# $OUT the moment they finish. Run from the repository root:
#
#   PLAN_ONLY=1 bash benchmarks/gpu_session.sh                         # print the plan, run nothing
#   STEPS="tests lut fidelity" OUT=/out bash benchmarks/gpu_session.sh   # one call (<= 10 min)
#   STEPS="timer fps throughput" OUT=/out bash benchmarks/gpu_session.sh # the next call
#   DRY_RUN=1 STEPS=... OUT=/tmp/x bash benchmarks/gpu_session.sh      # print each step's command (no GPU)
#
# Steps (estimates for an H200 at 769x1537, caps are hard `timeout`s, each <= 300 s):
#   tests       the GPU / TensorRT tests (pytest -m "gpu or trt")
#   timer       per-op latbench vs triton.testing.do_bench_cudagraph (benchmarks/timer_agreement.py)
#   lut         the 769x1537 cudagraph LUT (its build time is in build-*.json and steps.tsv)
#   lut2        a second build of the same LUT + compare-lut against the first (repeatability)
#   fidelity    validate-lut over 50 sampled networks (needs lut)
#   fit         latbench fit: the latency model on 40 uniform networks, judged on 20 held-out ones (needs lut)
#   fps         nas fps eager / cudagraph / compile of a sampled network, host-bound flag (uses lut)
#   throughput  search throughput, bf16 AMP + channels-last vs strict fp32
#   backends    whole networks eager / cudagraph / compile, 2 architectures (optional)
#
# Every step appends a row to steps.tsv (step, rc, seconds, estimate, cap) and re-packs everything
# measured so far (results + logs) into $OUT/gpu-results.tgz atomically, so a call stopped by its
# time limit still returns every finished step. $OUT gets at most four files: plan.txt,
# session.log, steps.tsv and gpu-results.tgz. Steps share .gpu-work/ (git-ignored): a later call
# on the same warm machine finds the LUT of an earlier one (or set LUT=path to a carried LUT).
#
# BUDGET_S (default 540) is the call's time: a step whose estimate no longer fits is skipped (and
# said so), and a running step's timeout never reaches past the budget.
#
# Setup installs nothing into the machine's Python (PEP 668 may refuse that, and there is no
# package index): the checkout runs from PYTHONPATH, with a generated .dist-info under
# .gpu-work/site that registers the entry points of pyproject.toml (the lgcnet space), and
# commands run as `python3 -m latbench.cli` / `python3 -m nas.cli`. Wheels carried in .whl/ (e.g.
# pytest, if a machine lacks it) are unpacked into .gpu-work/site with `pip install --target`,
# which PEP 668 allows. Nothing here changes GPU settings.
set -u
set -o pipefail

ALL_STEPS="tests timer lut lut2 fidelity fit fps throughput backends"
DEFAULT_STEPS="tests timer lut fidelity fit fps throughput"
declare -A EST=([tests]=90 [timer]=120 [lut]=180 [lut2]=200 [fidelity]=200 [fit]=150 [fps]=150 [throughput]=90 [backends]=240)
declare -A CAP=([tests]=240 [timer]=200 [lut]=300 [lut2]=300 [fidelity]=300 [fit]=280 [fps]=280 [throughput]=200 [backends]=300)
SETUP_EST=15

STEPS=${STEPS:-$DEFAULT_STEPS}
OUT=${OUT:-gpu-results}
RES=${RES:-769x1537}
BUDGET_S=${BUDGET_S:-540}
DRY_RUN=${DRY_RUN:-0}
PLAN_ONLY=${PLAN_ONLY:-0}
PY=${PYTHON:-python3}
REPO=$(pwd)
WORK=${WORK:-$REPO/.gpu-work}
R="$WORK/results"
LOGS="$WORK/logs"
T0=$(date +%s)

for s in $STEPS; do
  case " $ALL_STEPS " in *" $s "*) ;; *)
    echo "Error: unknown step '$s'; steps: $ALL_STEPS" >&2; exit 2;; esac
done

plan() {
  local total=0 cap=0
  printf 'plan: %s at %s, call budget %s s%s\n' "$STEPS" "$RES" "$BUDGET_S" "$([ "$DRY_RUN" = 1 ] && echo ' (dry run)')"
  printf '  %-11s %9s %7s\n' step estimate cap
  printf '  %-11s %8ss %6ss\n' setup "$SETUP_EST" 60
  total=$SETUP_EST
  for s in $STEPS; do
    printf '  %-11s %8ss %6ss\n' "$s" "${EST[$s]}" "${CAP[$s]}"
    total=$((total + ${EST[$s]})); cap=$((cap + ${CAP[$s]}))
  done
  printf '  %-11s %8ss %6ss  (%d min estimated)\n' total "$total" "$cap" $(((total + 59) / 60))
  if [ "$total" -gt "$BUDGET_S" ]; then
    echo "  note: the estimate exceeds this call's budget; steps that no longer fit are skipped -- split STEPS over calls"
  fi
}

mkdir -p "$OUT" "$R" "$LOGS"
plan | tee "$OUT/plan.txt"
[ "$PLAN_ONLY" = 1 ] && exit 0

log() { echo "== $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s $*" | tee -a "$WORK/session.log"; }
pack() {  # everything measured so far into $OUT, atomically
  cp "$WORK/session.log" "$OUT/session.log" 2>/dev/null
  [ -f "$WORK/steps.tsv" ] && cp "$WORK/steps.tsv" "$OUT/steps.tsv"
  tar -C "$WORK" -czf "$OUT/.gpu-results.tgz.tmp" results logs session.log 2>/dev/null \
    && mv -f "$OUT/.gpu-results.tgz.tmp" "$OUT/gpu-results.tgz"
}
[ -f "$WORK/steps.tsv" ] || printf 'step\trc\tseconds\testimate_s\tcap_s\tstarted_utc\n' >"$WORK/steps.tsv"

# ---- setup: no installs into the machine's Python ----------------------------------------------
SITE="$WORK/site"
mkdir -p "$SITE"
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
log "setup (python: $(command -v "$PY"))"
if [ "$DRY_RUN" != 1 ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      >>"$WORK/session.log" 2>&1 || log "warning: installing the carried wheels failed (see session.log)"
  fi
fi
# The entry points of pyproject.toml (e.g. latbench.spaces: lgcnet) without installing the package.
"$PY" - "$REPO/pyproject.toml" "$SITE" <<'PY' || { log "setup failed: cannot register the entry points"; pack; exit 1; }
import pathlib, sys
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
meta = tomllib.loads(pathlib.Path(sys.argv[1]).read_text())["project"]
d = pathlib.Path(sys.argv[2]) / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
d.mkdir(parents=True, exist_ok=True)
(d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
groups = dict(meta.get("entry-points", {}))
if meta.get("scripts"):
    groups["console_scripts"] = meta["scripts"]
(d / "entry_points.txt").write_text("".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
                                            for g, eps in groups.items()))
PY
if [ "$DRY_RUN" = 1 ]; then
  CARD=dry-run-gpu
else
  CARD=$("$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; n=torch.cuda.get_device_name(0).lower(); print(''.join(c if c.isalnum() else '-' for c in n).strip('-'))") \
    || { log "setup failed: torch sees no CUDA GPU"; pack; exit 1; }
  { nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit --format=csv
    "$PY" - <<'PY'
import platform, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.get_device_name(0), "host", platform.node())
for mod in ("triton", "onnxruntime", "tensorrt", "pynvml", "pytest"):
    try:
        m = __import__(mod)
        print(mod, getattr(m, "__version__", "?"))
    except Exception as exc:
        print(mod, "missing:", type(exc).__name__)
import latbench.space as s
print("spaces", s.available_spaces())
PY
  } >"$R/env-$CARD.txt" 2>&1
fi
if [ "$DRY_RUN" != 1 ] && ! "$PY" -c "import pytest" >/dev/null 2>&1; then
  log "warning: no pytest in $PY: the tests step will fail; carry pytest's wheels (pytest, pluggy, iniconfig) in .whl/"
fi
DATE=$(date -u +%Y%m%d)
LUT=${LUT:-$R/$CARD-cudagraph-$DATE.parquet}
LUT2="$R/$CARD-cudagraph-$DATE-repeat.parquet"
log "card $CARD, date $DATE, resolution $RES, LUT $LUT"
pack

# ---- steps ------------------------------------------------------------------------------------
cmd_tests() {
  local files
  files=$(grep -l 'mark\.gpu\|mark\.trt' tests/test_*.py | tr '\n' ' ')
  echo "$PY -m pytest -q -p no:cacheprovider -m 'gpu or trt' --junitxml=$R/gpu-tests-$CARD.xml $files"
}
cmd_timer() {
  echo "$PY benchmarks/timer_agreement.py --device cuda:0 --resolution $RES --max-ops 16 --rounds 3 --budget-s 150 --output-dir $R"
}
cmd_lut() {
  echo "$PY -m latbench.cli build-lut --gpu $CARD --backend cudagraph --resolution $RES --max-time 1 --output $LUT --no-progress --json > $R/build-$CARD.json && $PY -m latbench.cli show $LUT --json > $R/show-$CARD.json"
}
cmd_lut2() {
  echo "$PY -m latbench.cli build-lut --gpu $CARD --backend cudagraph --resolution $RES --max-time 1 --output $LUT2 --no-progress --json > $R/build-$CARD-repeat.json && $PY -m latbench.cli compare-lut $LUT $LUT2 --report $R/repeat-$CARD.md --json > $R/repeat-$CARD.json"
}
cmd_fidelity() {
  echo "$PY benchmarks/lut_fidelity.py $LUT --samples 50 --out-dir $R"
}
cmd_fit() {
  echo "$PY -m latbench.cli fit $LUT --fit-networks 40 --test-networks 20 --rounds 10 --window 0.05 --no-progress --json --plot $R/fit-$CARD.png > $R/fit-$CARD.json"
}
cmd_fps() {
  local lut=""
  [ -f "$LUT" ] && lut="--lut $LUT"
  echo "$PY -c 'import random,sys; from nas.config import SpaceConfig; from nas.genotype import Architecture, Genotype; from nas.space import LGCNetSpace; c=SpaceConfig(); Genotype(Architecture.from_dict(LGCNetSpace(c).sample_architecture(random.Random(0))), c, {\"note\": \"uniformly sampled (seed 0) for the GPU session\"}).save(sys.argv[1])' $WORK/g.json && $PY -m nas.cli fps --arch $WORK/g.json --gpu $CARD --resolution $RES --backend eager,cudagraph,compile $lut --reports $R/reports --json > $R/fps-$CARD.json"
}
cmd_throughput() {
  echo "$PY benchmarks/search_throughput.py --device cuda --variants amp-cl,fp32 --steps 10 --warmup 3 --out-dir $R"
}
cmd_backends() {
  echo "$PY benchmarks/backends_whole_network.py --device cuda:0 --resolution $RES --archs 2 --out-dir $R"
}

needs_lut() { case "$1" in fidelity|lut2|fit) return 0;; esac; return 1; }

for s in $STEPS; do
  now=$(( $(date +%s) - T0 ))
  left=$(( BUDGET_S - now ))
  if [ "${EST[$s]}" -gt "$left" ]; then
    log "skip $s: estimated ${EST[$s]} s, $left s left of this call's budget -- run it in the next call"
    printf '%s\tskipped\t0\t%s\t%s\t%s\n' "$s" "${EST[$s]}" "${CAP[$s]}" "$(date -u +%H:%M:%S)" >>"$WORK/steps.tsv"
    pack; continue
  fi
  if needs_lut "$s" && [ "$DRY_RUN" != 1 ] && [ ! -f "$LUT" ]; then
    log "skip $s: needs the LUT $LUT (run the lut step first on this machine, or set LUT=path)"
    printf '%s\tno-lut\t0\t%s\t%s\t%s\n' "$s" "${EST[$s]}" "${CAP[$s]}" "$(date -u +%H:%M:%S)" >>"$WORK/steps.tsv"
    pack; continue
  fi
  cap=${CAP[$s]}; [ "$cap" -gt "$left" ] && cap=$left
  cmd=$("cmd_$s")
  log "step $s (estimate ${EST[$s]} s, timeout $cap s): $cmd"
  started=$(date -u +%H:%M:%S); t=$(date +%s)
  if [ "$DRY_RUN" = 1 ]; then
    echo "$cmd" >"$R/$s.dry-run.txt"; rc=0
  else
    timeout --kill-after=10 "$cap" bash -c "$cmd" >"$LOGS/$s.log" 2>&1; rc=$?
  fi
  dt=$(( $(date +%s) - t ))
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$rc" "$dt" "${EST[$s]}" "$cap" "$started" >>"$WORK/steps.tsv"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && log "step $s hit its $cap s timeout"
  log "step $s: rc=$rc in $dt s (estimate ${EST[$s]} s)"
  pack
done

log "done in $(( $(date +%s) - T0 )) s"
column -t -s $'\t' "$WORK/steps.tsv" 2>/dev/null | tee -a "$WORK/session.log" || cat "$WORK/steps.tsv"
pack
echo "results: $OUT/gpu-results.tgz (unpack into benchmarks/results/ with the card and date: $CARD $DATE)"
