#!/usr/bin/env bash
# The GPU measurements of one lent H200 machine, in one call (see below) or two short calls whose
# steps each write their results into $OUT the moment they finish. Run from the repository root:
#
#   PLAN_ONLY=1 bash benchmarks/gpu_session.sh           # both calls' plans, the 15-minute arithmetic
#   CALL=1 OUT=$OUT bash benchmarks/gpu_session.sh        # call 1 (device timeout 360 s)
#   CALL=2 OUT=$OUT bash benchmarks/gpu_session.sh        # call 2 (device timeout 300 s), needs call 1's LUT
#   STEPS="fps timer" OUT=$OUT bash benchmarks/gpu_session.sh   # any steps, in this order
#   STANDIN=cpu CALL=1 OUT=/tmp/o bash benchmarks/gpu_session.sh   # every command with the CPU standing in
#   DRY_RUN=1 CALL=1 OUT=/tmp/o bash benchmarks/gpu_session.sh     # print each step's command, run nothing
#
# Call 1 (<= 6 min): lut fps fps_compile tests.  Call 2 (<= 5 min): lut fit fidelity timer.
#   lut          the 769x1537 cudagraph LUT of the deployed space (width 4.5); in call 2 it resumes
#                an unfinished build and costs a process start when the LUT is complete
#   fps          nas fps of nas/genotypes/lgcnet_paper.json, eager + cudagraph, at the LUT's width,
#                with the LUT's prediction beside each figure (needs the LUT)
#   fps_compile  the same network with the compile backend (Inductor's compile time is its cost)
#   tests        the GPU / TensorRT tests (pytest -m "gpu or trt"; TensorRT ones skip here)
#   fit          latbench fit: the latency model on 40 networks (--design span), judged on 20 held-out
#                uniform ones and, with TEST_SEARCH="FILE ...", on other searches' networks (each
#                file's derived architecture + TEST_SEARCH_DRAWS draws from its α, default 2): the
#                set other_searches. The files travel in a carried folder, e.g. .gpu-work/inputs/
#   fidelity     validate-lut (benchmarks/lut_fidelity.py) on 30 fresh networks (seeds 1000+),
#                in chunks of 10, each chunk written when it finishes; after fit it judges the model too
#   timer        latbench's timer vs triton.testing.do_bench_cudagraph on 8 ops
#   searches     short nas searches on this GPU (synthetic data, SEARCH_OPTS; β in SEARCH_BETAS x seeds
#                in SEARCH_SEEDS), priced by SEARCH_LUT (default: the session's LUT): the raw LUT sum,
#                and every second one by the LUT's latency model when it has one. A later fit step
#                judges their networks as other searches (with TEST_SEARCH's), so run it before fit
#   extras (in no call; a later session with more time): searches (above), lut2 (a second LUT + compare-lut),
#   throughput (search training throughput), backends (whole networks per backend, 2 architectures)
#
# The estimates are the seconds each step took on an H200 on 2026-12-04 (two calls; rounded up,
# benchmarks/results/gpu_session-nvidia-h200-2026-12-04.md): lut 103 (114 timings), fps 13,
# fps_compile 35, tests 60, fit 125 (78 networks with TEST_SEARCH; 62 without: ~100; the estimate is
# 10 s + 1.6 s per network it will measure), fidelity 49, timer 20, throughput 49, setup 13-18; lut2,
# backends and searches were not run (arithmetic; searches: 6 x ~25 s, a guess). Each step has a
# hard cap (`timeout`), and a step whose estimate no longer fits the call's budget is skipped and
# said so. A fresh machine answered in about 30 s that day; it stays warm for only 30 s after a
# call, too short to rely on for chaining calls: that session ran everything in ONE call
#   STEPS="lut tests fit fps timer fps_compile fidelity" BUDGET_S=480 OUT=$OUT bash benchmarks/gpu_session.sh
# (device timeout 500 s; 424 s used), which is the way to run it when 15 minutes are lent.
# What is open on a GPU after that session (docs/latency_model.md, "On a GPU"): the model judged on
# the GPU's own searches, with more fit networks -- one call of about 9 minutes:
#   STEPS="lut searches fit" SEARCH_LUT=luts/h200-cudagraph-769x1537-2026-12-04.parquet \
#   FIT_OPTS="--fit-networks 80 --test-networks 20 --rounds 10 --window 0.05" \
#   TEST_SEARCH="$(ls .gpu-work/inputs/*.json | tr '\n' ' ')" BUDGET_S=540 OUT=$OUT bash benchmarks/gpu_session.sh
# (device timeout 580 s; the fit step's estimate scales with the networks it will measure).
#
# Each step appends a row to steps.tsv (step, rc, seconds, estimate, cap) and re-packs everything
# measured so far (results + logs) into $OUT/gpu-results.tgz atomically, so a call stopped by its
# time limit still returns every finished step. $OUT holds plan.txt, session.log, steps.tsv,
# gpu-results.tgz and, once built, the LUT itself (to carry into call 2 on a fresh machine).
# Steps share $WORK (.gpu-work/, git-ignored): call 2 on the same warm machine finds call 1's LUT;
# on a fresh machine, put the returned LUT into .gpu-work/results/ and carry that folder (or set LUT=).
#
# Nothing is installed: the machine's python3 (/opt/torch/.venv: torch 2.11 + CUDA 13, triton,
# onnxruntime CPU, pytest, no TensorRT, no onnxruntime-gpu, no network) runs the working tree from
# PYTHONPATH, with a generated .dist-info under $WORK/site that registers pyproject.toml's entry
# points (the lgcnet space), and commands run as `python3 -m latbench.cli` / `python3 -m nas.cli`.
# What the machine lacks (TensorRT, ONNX Runtime's CUDA provider) is said in session.log and
# env-CARD.txt; the steps that would need it skip. Nothing here changes GPU settings.
#
# STANDIN=cpu runs every step's real command with the CPU standing in (cpu backend, 33x65, the
# space at width 1.0, a fast protocol, a few networks; fps_compile times the cpu backend because
# Inductor's C++ build of a whole network takes minutes on 2 cores): tests/test_gpu_session.py
# runs both calls that way, so a wrong flag or a width mismatch fails the suite.
set -u
set -o pipefail

ALL_STEPS="lut fps fps_compile tests fit fidelity timer searches lut2 throughput backends"
CALL1_STEPS="lut fps fps_compile tests"
CALL2_STEPS="lut fit fidelity timer"
declare -A EST=([lut]=110 [fps]=20 [fps_compile]=45 [tests]=65 [fit]=110 [fidelity]=55 [timer]=25
                [searches]=150 [lut2]=110 [throughput]=55 [backends]=240)
declare -A CAP=([lut]=200 [fps]=60 [fps_compile]=150 [tests]=120 [fit]=240 [fidelity]=120 [timer]=80
                [searches]=300 [lut2]=220 [throughput]=200 [backends]=300)
FIT_S_PER_NETWORK_X10=16  # the fit step: 125 s for 78 networks on 2026-12-04, ~1.6 s a network
SETUP_EST=15
LUT_RESUME_EST=15   # the lut step when the LUT file already exists (a complete build times nothing)
MACHINE_START_S=60  # a fresh machine's start-up, outside the script (~30 s seen on 2026-12-04)
SESSION_S=900       # the device time of a session, start-up included
declare -A CALL_LIMIT=([1]=360 [2]=300)   # the device call's timeout_s
SPARE_S=60

CALL=${CALL:-}
case "$CALL" in ""|1|2) ;; *) echo "Error: CALL must be 1 or 2, not '$CALL'" >&2; exit 2;; esac
if [ -n "${STEPS:-}" ]; then :;
elif [ "$CALL" = 1 ]; then STEPS=$CALL1_STEPS
elif [ "$CALL" = 2 ]; then STEPS=$CALL2_STEPS
elif [ "${PLAN_ONLY:-0}" = 1 ]; then STEPS=""
else echo "Error: set CALL=1 or CALL=2 (or STEPS=...); PLAN_ONLY=1 prints the plan" >&2; exit 2
fi
for s in $STEPS; do
  case " $ALL_STEPS " in *" $s "*) ;; *)
    echo "Error: unknown step '$s'; steps: $ALL_STEPS" >&2; exit 2;; esac
done

STANDIN=${STANDIN:-}
case "$STANDIN" in ""|cpu) ;; *) echo "Error: STANDIN must be cpu or unset, not '$STANDIN'" >&2; exit 2;; esac
OUT=${OUT:-gpu-results}
DRY_RUN=${DRY_RUN:-0}
PLAN_ONLY=${PLAN_ONLY:-0}
PY=${PYTHON:-python3}
REPO=$(pwd)
WORK=${WORK:-$REPO/.gpu-work}
R="$WORK/results"
LOGS="$WORK/logs"
T0=$(date +%s)
if [ -n "$CALL" ]; then BUDGET_S=${BUDGET_S:-$(( ${CALL_LIMIT[$CALL]} - 20 ))}; else BUDGET_S=${BUDGET_S:-540}; fi

# ---- the parameters of each step: the H200, or the CPU standing in --------------------------------
if [ "$STANDIN" = cpu ]; then
  DEVICE=${DEVICE:-cpu}; BACKEND=${BACKEND:-cpu}; RES=${RES:-33x65}; SPACE_OPTS=${SPACE_OPTS:-width_mult=1.0}
  LUT_PROTOCOL=${LUT_PROTOCOL:---max-time 0.02 --min-time 0 --warmup 0 --max-noise 0.5 --threads 1 --accept-load}
  FPS_BACKENDS=${FPS_BACKENDS:-cpu}; COMPILE_BACKENDS=${COMPILE_BACKENDS:-cpu}
  FIT_OPTS=${FIT_OPTS:---fit-networks 8 --test-networks 3 --rounds 2 --window 0.01}
  SEARCH_OPTS=${SEARCH_OPTS:---epochs 1 --length 4 --batch-size 2 --lr-a 0.05}
  SEARCH_BETAS=${SEARCH_BETAS:-0.5 5}; SEARCH_SEEDS=${SEARCH_SEEDS:-0}
  FIDELITY_OPTS=${FIDELITY_OPTS:---samples 6 --chunk 3 --seed 1000 --rounds 2 --window 0.01}
  TIMER_OPTS=${TIMER_OPTS:---max-ops 2 --rounds 1 --max-time 0.02 --ref-time 0.02 --threads 1}
  THROUGHPUT_OPTS=${THROUGHPUT_OPTS:---device cpu --crop $RES --batch-size 2 --steps 1 --warmup 1 --threads 1}
  BACKENDS_OPTS=${BACKENDS_OPTS:---archs 1 --backends cpu --max-time 0.05 --threads 1}
else
  DEVICE=${DEVICE:-cuda:0}; BACKEND=${BACKEND:-cudagraph}; RES=${RES:-769x1537}; SPACE_OPTS=${SPACE_OPTS:-}
  LUT_PROTOCOL=${LUT_PROTOCOL:---max-time 1}
  FPS_BACKENDS=${FPS_BACKENDS:-eager,cudagraph}; COMPILE_BACKENDS=${COMPILE_BACKENDS:-compile}
  FIT_OPTS=${FIT_OPTS:---fit-networks 40 --test-networks 20 --rounds 10 --window 0.05}
  SEARCH_OPTS=${SEARCH_OPTS:---epochs 6 --length 48 --batch-size 8 --lr-a 0.05 --crop 257x513}
  SEARCH_BETAS=${SEARCH_BETAS:-0.5 2 5}; SEARCH_SEEDS=${SEARCH_SEEDS:-0 1}
  FIDELITY_OPTS=${FIDELITY_OPTS:---samples 30 --chunk 10 --seed 1000 --rounds 10 --window 0.05}
  TIMER_OPTS=${TIMER_OPTS:---max-ops 8 --rounds 2}
  THROUGHPUT_OPTS=${THROUGHPUT_OPTS:---device cuda --variants amp-cl,fp32 --steps 10 --warmup 3}
  BACKENDS_OPTS=${BACKENDS_OPTS:---archs 2}
fi
GENOTYPE=${GENOTYPE:-nas/genotypes/lgcnet_paper.json}

opt_of() {  # opt_of OPTION DEFAULT: the value of OPTION in FIT_OPTS
  local v; v=$(sed -n "s/.*$1[ =]\([0-9][0-9]*\).*/\1/p" <<<"$FIT_OPTS"); echo "${v:-$2}"
}
fit_networks() {  # the networks the fit step will measure: fit + held-out + other searches' (1 + draws each)
  local n_ts n_s=0 f
  n_ts=$(wc -w <<<"${TEST_SEARCH:-}")
  case " ${STEPS:-} " in *" searches "*) n_s=$(( $(wc -w <<<"$SEARCH_BETAS") * $(wc -w <<<"$SEARCH_SEEDS") ));;
    *) for f in "$R"/searches/*/genotype.json; do [ -f "$f" ] && n_s=$((n_s + 1)); done;; esac
  echo $(( $(opt_of --fit-networks 40) + $(opt_of --test-networks 20) + (n_ts + n_s) * (1 + ${TEST_SEARCH_DRAWS:-2}) ))
}
est_of() {  # the estimate of step $1 now (ASSUME_LUT=1: as if call 1's LUT were there)
  if [ "$1" = lut ] && { [ "${ASSUME_LUT:-0}" = 1 ] || [ -f "${LUT:-/nonexistent}" ]; }; then echo "$LUT_RESUME_EST"
  elif [ "$1" = fit ]; then echo $(( 10 + $(fit_networks) * FIT_S_PER_NETWORK_X10 / 10 ))
  else echo "${EST[$1]}"; fi
}
cap_of() {  # the hard cap of step $1: its table's, or 1.5x the estimate for a fit larger than the default
  local c=${CAP[$1]} e
  if [ "$1" = fit ]; then e=$(est_of fit); [ $((e * 3 / 2)) -gt "$c" ] && c=$((e * 3 / 2)); fi
  echo "$c"
}

plan_call() {  # plan_call TITLE LIMIT STEPS...; prints the table, returns the total estimate in $PLAN_TOTAL
  local title=$1 limit=$2; shift 2
  local total=$SETUP_EST cap=60 s e c
  printf '%s\n' "$title"
  printf '  %-12s %9s %7s\n' step estimate cap
  printf '  %-12s %8ss %6ss\n' setup "$SETUP_EST" 60
  for s in "$@"; do
    e=$(est_of "$s"); c=$(cap_of "$s")
    printf '  %-12s %8ss %6ss\n' "$s" "$e" "$c"
    total=$((total + e)); cap=$((cap + c))
  done
  printf '  %-12s %8ss %6ss  (%d min estimated)\n' total "$total" "$cap" $(((total + 59) / 60))
  if [ "$limit" -gt 0 ]; then
    if [ $((total + SPARE_S)) -le "$limit" ]; then
      printf '  fits: %d s estimated + %d s spare <= the call limit of %d s\n' "$total" "$SPARE_S" "$limit"
    else
      printf '  DOES NOT FIT: %d s estimated + %d s spare > the call limit of %d s\n' "$total" "$SPARE_S" "$limit"
    fi
  fi
  PLAN_TOTAL=$total
}

plan() {
  local mode=""
  [ "$DRY_RUN" = 1 ] && mode=" (dry run)"
  [ "$STANDIN" = cpu ] && mode="$mode (the CPU standing in: the estimates are the H200's)"
  printf 'plan at %s on %s, backend %s%s\n' "$RES" "$DEVICE" "$BACKEND" "$mode"
  if [ -n "$STEPS" ] && [ -z "$CALL" ]; then
    plan_call "steps: $STEPS (budget $BUDGET_S s)" 0 $STEPS
    [ "$PLAN_TOTAL" -gt "$BUDGET_S" ] && echo "  note: the estimate exceeds the budget; steps that no longer fit are skipped -- split STEPS over calls"
    return 0
  fi
  local c2="call 2: $CALL2_STEPS (device timeout ${CALL_LIMIT[2]} s; lut resumes call 1's LUT)"
  if [ "$CALL" = 1 ]; then
    plan_call "call 1: $STEPS (budget $BUDGET_S s, device timeout ${CALL_LIMIT[1]} s)" "${CALL_LIMIT[1]}" $STEPS
    return 0
  elif [ "$CALL" = 2 ]; then
    ASSUME_LUT=1 plan_call "${c2/(device/(budget $BUDGET_S s, device}" "${CALL_LIMIT[2]}" $STEPS
    return 0
  fi
  local t1 t2
  plan_call "call 1: $CALL1_STEPS (device timeout ${CALL_LIMIT[1]} s)" "${CALL_LIMIT[1]}" $CALL1_STEPS; t1=$PLAN_TOTAL
  ASSUME_LUT=1 plan_call "$c2" "${CALL_LIMIT[2]}" $CALL2_STEPS; t2=$PLAN_TOTAL
  printf 'session: machine start ~%d s + call 1 <= %d s + call 2 <= %d s = %d s of the %d s device time (estimated: %d s)\n' \
    "$MACHINE_START_S" "${CALL_LIMIT[1]}" "${CALL_LIMIT[2]}" $((MACHINE_START_S + ${CALL_LIMIT[1]} + ${CALL_LIMIT[2]})) \
    "$SESSION_S" $((MACHINE_START_S + t1 + t2))
}

mkdir -p "$OUT"
if [ "$PLAN_ONLY" = 1 ]; then plan | tee "$OUT/plan.txt"; exit 0; fi
mkdir -p "$R" "$LOGS"
plan | tee "$OUT/plan.txt"

log() { echo "== $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s $*" | tee -a "$WORK/session.log"; }
pack() {  # everything measured so far into $OUT, atomically
  cp "$WORK/session.log" "$OUT/session.log" 2>/dev/null
  [ -f "$WORK/steps.tsv" ] && cp "$WORK/steps.tsv" "$OUT/steps.tsv"
  [ -n "${LUT:-}" ] && [ -f "$LUT" ] && cp "$LUT" "$OUT/.lut.tmp" && mv -f "$OUT/.lut.tmp" "$OUT/$(basename "$LUT")"
  tar -C "$WORK" -czf "$OUT/.gpu-results.tgz.tmp" results logs session.log 2>/dev/null \
    && mv -f "$OUT/.gpu-results.tgz.tmp" "$OUT/gpu-results.tgz"
}
[ -f "$WORK/steps.tsv" ] || printf 'step\trc\tseconds\testimate_s\tcap_s\tstarted_utc\tcall\n' >"$WORK/steps.tsv"

# ---- setup: no installs into the machine's Python ----------------------------------------------
if [ -z "${PYTHON:-}" ] && ! "$PY" -c "import torch" >/dev/null 2>&1 && [ -x /opt/torch/.venv/bin/python3 ]; then
  PY=/opt/torch/.venv/bin/python3  # the lent machine's venv, when python3 on PATH is another one
fi
SITE="$WORK/site"
mkdir -p "$SITE"
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
log "setup (call ${CALL:-steps}, python: $(command -v "$PY"))"
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
elif [ "$DEVICE" = cpu ]; then
  CARD=cpu
else
  CARD=$("$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; n=torch.cuda.get_device_name(0).lower(); print(''.join(c if c.isalnum() else '-' for c in n).strip('-'))") \
    || { log "setup failed: torch sees no CUDA GPU"; pack; exit 1; }
fi
if [ "$DRY_RUN" != 1 ]; then
  { [ "$DEVICE" != cpu ] && nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit --format=csv
    "$PY" - "$DEVICE" <<'PY'
import platform, sys, torch
dev = sys.argv[1]
print("python", sys.version.split()[0], sys.executable, "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "host", platform.node())
if dev != "cpu":
    print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
for mod in ("triton", "onnxruntime", "tensorrt", "pynvml", "pytest"):
    try:
        m = __import__(mod)
        print(mod, getattr(m, "__version__", "?"))
    except Exception as exc:
        print(mod, "missing:", type(exc).__name__)
unavailable = []
try:
    import tensorrt  # noqa: F401
except Exception:
    unavailable.append("TensorRT (no tensorrt module: the trt backend and its tests skip)")
try:
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        unavailable.append(f"ONNX Runtime's CUDA provider (onnxruntime {ort.__version__} has "
                           f"{', '.join(ort.get_available_providers())}: the ort backend runs on the CPU only)")
except Exception:
    unavailable.append("ONNX Runtime (no onnxruntime module)")
try:
    import triton  # noqa: F401
except Exception:
    unavailable.append("triton (the timer step's do_bench_cudagraph reference)")
print("unavailable:", "; ".join(unavailable) if unavailable else "nothing")
import latbench.space as s
print("spaces", s.available_spaces())
PY
  } >"$R/env-$CARD.txt" 2>&1
  log "$(grep '^unavailable:' "$R/env-$CARD.txt" || echo 'unavailable: (the environment probe failed; see env-'"$CARD"'.txt)')"
  "$PY" -c "import pytest" >/dev/null 2>&1 || log "warning: no pytest in $PY: the tests step will fail"
fi
DATE=$(date -u +%Y%m%d)
LUT=${LUT:-$R/$CARD-$BACKEND-$RES.parquet}
LUT2="$R/$CARD-$BACKEND-$RES-repeat.parquet"
SPACE_ARGS=""
for kv in $SPACE_OPTS; do SPACE_ARGS="$SPACE_ARGS --space-opt $kv"; done
log "card $CARD, date $DATE, device $DEVICE, backend $BACKEND, resolution $RES, LUT $LUT"
pack

# ---- steps ------------------------------------------------------------------------------------
lut_width() {  # the width multiplier the LUT was built for (its metadata's space configuration)
  "$PY" -c 'import sys; from latbench.lut import read_lut; print(read_lut(sys.argv[1]).meta["space"]["config"]["width_mult"])' "$LUT"
}
cmd_tests() {
  local files
  files=$(grep -l 'mark\.gpu\|mark\.trt' tests/test_*.py | grep -v 'tests/test_gpu_session\.py' | tr '\n' ' ')
  echo "$PY -m pytest -v -rfEs --durations=10 -p no:cacheprovider -m 'gpu or trt' --junitxml=$R/gpu-tests-$CARD.xml $files"
}
cmd_lut() {
  echo "$PY -m latbench.cli build-lut --gpu $CARD --device $DEVICE --backend $BACKEND --resolution $RES$SPACE_ARGS $LUT_PROTOCOL --output $LUT --no-progress --json > $R/build-$CARD.json && $PY -m latbench.cli show $LUT --json > $R/show-$CARD.json"
}
cmd_lut2() {
  echo "$PY -m latbench.cli build-lut --gpu $CARD --device $DEVICE --backend $BACKEND --resolution $RES$SPACE_ARGS $LUT_PROTOCOL --output $LUT2 --no-progress --json > $R/build-$CARD-repeat.json && $PY -m latbench.cli compare-lut $LUT $LUT2 --report $R/repeat-$CARD.md --json > $R/repeat-$CARD.json"
}
fps_cmd() {  # fps_cmd BACKENDS TAG: the paper's network at the LUT's width, with the LUT's prediction
  local w
  if [ "$DRY_RUN" = 1 ]; then w='<the LUT width>'; else w=$(lut_width) || { echo "false # cannot read the LUT's width from $LUT"; return; }; fi
  echo "$PY -m nas.cli fps --arch $GENOTYPE --width-mult $w --gpu $CARD --device $DEVICE --resolution $RES --backend $1 --lut $LUT --reports $R/reports --json > $R/fps-$CARD-$2.json"
}
cmd_fps() { fps_cmd "$FPS_BACKENDS" eager-cudagraph; }
cmd_fps_compile() { fps_cmd "$COMPILE_BACKENDS" compile; }
cmd_fit() {
  local ts="" f
  for f in ${TEST_SEARCH:-}; do ts="$ts --test-search $f"; done
  for f in "$R"/searches/*/genotype.json; do [ -f "$f" ] && ts="$ts --test-search $f"; done  # the searches step's
  [ -n "$ts" ] && ts="$ts --test-search-draws ${TEST_SEARCH_DRAWS:-2}"
  echo "$PY -m latbench.cli fit $LUT $FIT_OPTS$ts --device $DEVICE --no-progress --json --plot $R/fit-$CARD.png > $R/fit-$CARD.json"
}
cmd_searches() {  # every second search priced by SEARCH_LUT's latency model, when it has one
  local slut=${SEARCH_LUT:-$LUT} model=0 i=0 b s p how cmds=""
  if [ "$DRY_RUN" != 1 ]; then
    [ -f "$slut" ] || { echo "echo 'no LUT to price the searches: $slut (run the lut step first, or set SEARCH_LUT)'; false"; return; }
    "$PY" -c 'import sys; from latbench.lut import read_lut; sys.exit(0 if read_lut(sys.argv[1]).meta.get("latency_models") else 1)' "$slut" && model=1
  fi
  for b in $SEARCH_BETAS; do for s in $SEARCH_SEEDS; do
    p=raw; [ "$model" = 1 ] && [ $((i % 2)) = 1 ] && p=model; i=$((i + 1))
    if [ "$p" = raw ]; then how="--latency-model none --no-calibration"; else how="--latency-model require"; fi
    cmds="$cmds$PY -m nas.cli search --lut $slut --dataset synthetic $SEARCH_OPTS --beta $b --seed $s --latency-scope network $how --device $DEVICE --out $R/searches/$p-b$b-s$s --no-progress --no-plots --workers 0; echo \"search $p b$b s$s: rc \$?\"; "
  done; done
  echo "${cmds}ls $R/searches/*/genotype.json"  # fails when no search finished
}
cmd_fidelity() {
  echo "$PY benchmarks/lut_fidelity.py $LUT $FIDELITY_OPTS --device $DEVICE --budget-s $(( ${1:-120} * 2 / 3 )) --out-dir $R"
}
cmd_timer() {
  echo "$PY benchmarks/timer_agreement.py --device $DEVICE --resolution $RES $TIMER_OPTS --budget-s $(( ${1:-80} * 2 / 3 )) --output-dir $R"
}
cmd_throughput() {
  echo "$PY benchmarks/search_throughput.py $THROUGHPUT_OPTS --out-dir $R"
}
cmd_backends() {
  echo "$PY benchmarks/backends_whole_network.py --device $DEVICE --resolution $RES $BACKENDS_OPTS --out-dir $R"
}

needs_lut() { case "$1" in fps|fps_compile|fit|fidelity|lut2) return 0;; esac; return 1; }

for s in $STEPS; do
  now=$(( $(date +%s) - T0 ))
  left=$(( BUDGET_S - now ))
  est=$(est_of "$s")
  if [ "$est" -gt "$left" ]; then
    log "skip $s: estimated $est s, $left s left of this call's budget -- run it in the next call"
    printf '%s\tskipped\t0\t%s\t%s\t%s\t%s\n' "$s" "$est" "${CAP[$s]}" "$(date -u +%H:%M:%S)" "${CALL:--}" >>"$WORK/steps.tsv"
    pack; continue
  fi
  if needs_lut "$s" && [ "$DRY_RUN" != 1 ] && [ ! -f "$LUT" ]; then
    log "skip $s: needs the LUT $LUT (run the lut step first on this machine, or carry it and set LUT=path)"
    printf '%s\tno-lut\t0\t%s\t%s\t%s\t%s\n' "$s" "$est" "${CAP[$s]}" "$(date -u +%H:%M:%S)" "${CALL:--}" >>"$WORK/steps.tsv"
    pack; continue
  fi
  cap=$(cap_of "$s"); [ "$cap" -gt "$left" ] && cap=$left
  cmd=$("cmd_$s" "$cap")
  log "step $s (estimate $est s, timeout $cap s): $cmd"
  started=$(date -u +%H:%M:%S); t=$(date +%s)
  if [ "$DRY_RUN" = 1 ]; then
    echo "$cmd" >"$R/$s.dry-run.txt"; rc=0
  else
    timeout --kill-after=10 "$cap" bash -c "$cmd" >"$LOGS/$s.log" 2>&1; rc=$?
  fi
  dt=$(( $(date +%s) - t ))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$rc" "$dt" "$est" "$cap" "$started" "${CALL:--}" >>"$WORK/steps.tsv"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then log "step $s hit its $cap s timeout"; fi
  [ "$rc" != 0 ] && log "step $s failed; the last lines of its log:" && tail -n 5 "$LOGS/$s.log" | sed 's/^/   | /' | tee -a "$WORK/session.log"
  log "step $s: rc=$rc in $dt s (estimate $est s)"
  pack
done

log "done in $(( $(date +%s) - T0 )) s"
column -t -s $'\t' "$WORK/steps.tsv" 2>/dev/null | tee -a "$WORK/session.log" || cat "$WORK/steps.tsv"
pack
echo "results: $OUT/gpu-results.tgz (unpack into benchmarks/results/ with the card and date: $CARD $DATE)"
