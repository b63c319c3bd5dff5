#!/usr/bin/env bash
# One device session in one call: build against the oldest supported XLA FFI headers (carried in
# .ffi_headers when present), then run the stages named on the command line, in order:
#   build ensure_built tests tests_kernels tests_select sanitize calibrate calibrate_classes bench bench_part1 bench_part2 bench_merge crash_probe bench_backward examples
#   use_build ab_builds ab_bench ab_ncu_insts with_baseline bench_generic bench_generic_backward ncu_generic quickbench small_t small_t_options floor_probe device_timeline ncu_check variants ncu_detail ncu_stalls ncu_bandwidth ncu_source ncu_single multigpu stream_probe probe_regs probe_variants
# Logs and results are written under a work folder and packed into $OUT/results.tgz, the one file under $OUT,
# after every stage: a call stopped at its time limit still brings back the stages it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-/tmp/qkrope_out}
OUT=/tmp/qkrope_work
rm -rf "$OUT" && mkdir -p "$OUT" "$RESULTS"
# The result files' prefix: the GPU's model in lower case (h100, h200), from "NVIDIA H200" and the like.
DEVICE_NAME=${DEVICE_NAME:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | awk '{print tolower($2)}')}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false CMAKE_BUILD_PARALLEL_LEVEL=16

build() {
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUT/device.txt"
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" \
    | tee -a "$OUT/device.txt"
  local headers=()
  [ -d .ffi_headers ] && headers=(-C "cmake.define.QKROPE_FFI_INCLUDE_DIR=$PWD/.ffi_headers")
  if ! python3 -m pip install --no-build-isolation --no-deps -v -e . "${headers[@]}" > "$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"
    return 1
  fi
  grep -E "jax_qkrope:|spill" "$OUT/build.log" | sort | uniq -c | sort -rn | head -20
  python3 -c "import jax_qkrope as q; print('FFI API', q.COMPILED_FFI_API_VERSION, 'CUDA', q.HAS_CUDA_KERNELS, q.CUDA_ARCHITECTURES)"
}

ensure_built() {  # a warm machine keeps the editable build; a fresh one builds
  python3 -c "import jax_qkrope as q, sys; sys.exit(0 if q.HAS_CUDA_KERNELS else 1)" 2>/dev/null || build
}

tests() {
  python3 -m pytest -n 8 -q -p no:cacheprovider -rs --maxfail=40 tests 2>&1 | tee "$OUT/pytest_gpu.log" | tail -60
}
tests_kernels() {  # the GPU kernel tests and the forward matrix only
  python3 -m pytest -n 12 -q -p no:cacheprovider -rs --maxfail=40 tests/test_gpu_kernels.py tests/test_forward.py tests/test_backward.py \
    2>&1 | tee "$OUT/pytest_gpu_kernels.log" | tail -40
}
# PYTEST_EXTRA: more pytest options (e.g. --durations=60).
tests_select() {  # TEST_FILES (default: the kernel and backward tests), TEST_K: a pytest -k expression, TEST_TIMEOUT (s)
  # shellcheck disable=SC2086
  timeout "${TEST_TIMEOUT:-0}" python3 -m pytest -n 12 -q -p no:cacheprovider -rs --maxfail=40 ${PYTEST_EXTRA:-} \
    ${TEST_FILES:-tests/test_gpu_kernels.py tests/test_backward.py} \
    -k "${TEST_K:-}" 2>&1 | tee "$OUT/pytest_selected.log" | tail -40
}

# SANITIZE_TOOLS: the compute-sanitizer tools (default all three). XLA runs without command buffers (CUDA
# graphs) and autotuning under the sanitizer. The Python process still segfaults now and then (exit 139)
# before any kernel runs, with no sanitizer report, whichever the tool (results/sanitizer_h100_run8, _run9,
# _run10): such a run is kept as sanitizer_<tool>_segfault.log and the tool runs once more.
sanitize_once() {
  XLA_FLAGS="--xla_gpu_enable_command_buffer= --xla_gpu_autotune_level=0" XLA_PYTHON_CLIENT_ALLOCATOR=platform \
    compute-sanitizer --tool "$1" --kernel-name kns=qkrope --print-limit 20 python3 benchmarks/sanitize_matrix.py \
    > "$OUT/sanitizer_$1.log" 2>&1
}
sanitize() {
  local tool rc
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck}; do
    sanitize_once "$tool"
    rc=$?
    if [ "$rc" = 139 ]; then
      mv "$OUT/sanitizer_$tool.log" "$OUT/sanitizer_${tool}_segfault.log"
      sanitize_once "$tool"
      rc=$?
    fi
    echo "$tool exit $rc"; tail -4 "$OUT/sanitizer_$tool.log"
    pack  # each tool's log back even if a later tool runs past the call's limit
  done
}

# CAL_ARGS: more calibrate.py options (e.g. --tokens 256 512 --previous-sweep SWEEP.json, --per-device).
# CAL_TIMEOUT (s): stop the sweep there, so that the stage still ends and packs what it wrote (the calibration
# file is written before the auto check, the sweep file after it).
calibrate() {
  # shellcheck disable=SC2086
  timeout "${CAL_TIMEOUT:-0}" python3 benchmarks/calibrate.py --out "$OUT" ${CAL_ARGS:-} 2>&1 | tee "$OUT/calibrate.log" | tail -70
  cp jax_qkrope/calibration/sm90*.json "$OUT/"
}
# Re-measure the head_dim classes in $CAL_CLASSES (e.g. "64 128"), merged into the committed file; the
# sweep written carries the other classes' rows from $CAL_PREVIOUS (a sweep file) when given. CAL_ARGS: more
# calibrate.py options (--measure-l2).
calibrate_classes() {
  # shellcheck disable=SC2086
  python3 benchmarks/calibrate.py --classes $CAL_CLASSES ${CAL_PREVIOUS:+--previous-sweep "$CAL_PREVIOUS"} ${CAL_ARGS:-} --out "$OUT" \
    2>&1 | tee "$OUT/calibrate_classes.log" | tail -40
  cp jax_qkrope/calibration/sm90*.json "$OUT/"
}
examples() {
  { python3 -m jax_qkrope.demo; python3 examples/qwen3_block.py; python3 examples/train_tiny.py --plot "$OUT/train_tiny.png"; } \
    2>&1 | tee "$OUT/examples.log" | grep -v "^\[" | tail -30
}
calibrate_quick() { python3 benchmarks/calibrate.py --quick --out "$OUT" 2>&1 | tee "$OUT/calibrate_quick.log" | tail -50; }
bench() { python3 -m jax_qkrope.bench --out "$OUT" --name "$DEVICE_NAME" 2>&1 | tail -62; }
# The forward bench in two halves, for two calls (each half's files survive a timeout), then joined.
bench_part1() { python3 -m jax_qkrope.bench --out "$OUT/bench_part1" --name "$DEVICE_NAME" --shapes 32,8,128 64,8,128 2>&1 | tail -3; }
bench_part2() { python3 -m jax_qkrope.bench --out "$OUT/bench_part2" --name "$DEVICE_NAME" --shapes 16,2,256 16,16,64 2>&1 | tail -3; }
bench_merge() {  # BENCH_PARTS: the halves' JSON files (default: both under $OUT)
  # shellcheck disable=SC2086
  python3 -m jax_qkrope.bench --merge ${BENCH_PARTS:-"$OUT"/bench_part*/"$DEVICE_NAME"_forward.json} --out "$OUT" --name "$DEVICE_NAME" 2>&1 | tail -62
}
crash_probe() { python3 benchmarks/profile_crash_probe.py 2>&1 | tee "$OUT/profile_crash_probe.log" | tail -10; }
bench_backward() { python3 -m jax_qkrope.bench --out "$OUT" --name "$DEVICE_NAME" --backward-only --styles neox gptj 2>&1 | tail -20; }
quickbench() {
  python3 -m jax_qkrope.bench --out "$OUT" --name quick --shapes 32,8,128 16,2,256 --tokens 1 16 1024 4096 16384 65536 \
    --styles neox 2>&1 | tail -16
}
# Shapes the generic kernels serve: head_dims outside 64/128/256, and neox with partial rotary. BENCH_ARGS:
# more bench options (e.g. --prefetch 0 for an A/B of the cos/sin prefetch in one build).
bench_generic() {
  # shellcheck disable=SC2086
  python3 -m jax_qkrope.bench --out "$OUT" --name "${BENCH_NAME:-${DEVICE_NAME}_generic}" --shapes 32,8,80 32,8,96 16,2,192 32,8,128,64 \
    --tokens ${BENCH_TOKENS:-1 128 1024 4096 16384 65536} ${BENCH_ARGS:-} 2>&1 | tail -52
}
bench_generic_backward() {
  python3 -m jax_qkrope.bench --out "$OUT" --name "${BENCH_NAME:-${DEVICE_NAME}_generic}" --backward-only \
    --shapes 32,8,80 32,8,96 16,2,192 32,8,128,64 --tokens ${BENCH_TOKENS:-1024 16384} 2>&1 | grep -v "it/s" | tail -20
}
small_t() { python3 benchmarks/small_t_experiment.py 2>&1 | tee "$OUT/small_t_experiment.log" | tail -20; }
small_t_options() { python3 benchmarks/small_t_options.py --out "$OUT" 2>&1 | tee "$OUT/small_t_options.log" | tail -16; }
# shellcheck disable=SC2086
floor_probe() { python3 benchmarks/floor_probe.py --out "$OUT" ${FLOOR_ARGS:-} 2>&1 | tee "$OUT/floor_probe.log" | tail -30; }
device_timeline() { python3 benchmarks/device_timeline.py --out "$OUT" 2>&1 | tee "$OUT/device_timeline.log" | tail -40; }
ncu_check() {
  ncu --kernel-name regex:_kernel --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
    python3 benchmarks/ncu_kernels.py > "$OUT/ncu_kernels.csv" 2> "$OUT/ncu_kernels.err"
  echo "ncu exit $?"; python3 benchmarks/ncu_summary.py "$OUT/ncu_kernels.csv"
}
# VARIANT_ARGS: kernel_variants.py options (e.g. --backward-only --backward-heads 32,8,80); several sets
# separated by ';' run in turn, each into variants_<i>/ and kernel_variants_<i>.log.
variants() {
  local i=0 set sets
  IFS=';' read -ra sets <<< "${VARIANT_ARGS:-}"
  [ ${#sets[@]} = 0 ] && sets=("")
  for set in "${sets[@]}"; do
    # shellcheck disable=SC2086
    python3 benchmarks/kernel_variants.py --out "$OUT/variants_$i" $set 2>&1 | tee "$OUT/kernel_variants_$i.log" \
      | grep -v "^\[" | tail -30
    i=$((i + 1))
  done
}
ncu_detail() {  # registers, achieved occupancy and DRAM throughput of the tuned kernels
  ncu --kernel-name regex:tuned_kernel --clock-control none --cache-control none --csv --metrics \
    gpu__time_duration.sum,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed \
    python3 benchmarks/ncu_kernels.py > "$OUT/ncu_detail.csv" 2> "$OUT/ncu_detail.err"
  echo "ncu exit $?"; python3 benchmarks/ncu_summary.py "$OUT/ncu_detail.csv"
}
# Where the forward's warps wait at T = 4096 against T = 65536 ((32, 8, 128) neox, N = 8, third call of
# each: inputs warm in L2): warp-state, scheduler, memory-workload and occupancy sections.
ncu_stalls() {
  local tokens
  for tokens in 4096 65536; do
    ncu --kernel-name regex:forward_tuned --launch-skip 2 --launch-count 1 --cache-control none --clock-control none \
      --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --section Occupancy \
      --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
      python3 benchmarks/ncu_kernels.py --tokens "$tokens" --choices 8 --forward-only > "$OUT/ncu_stalls_$tokens.txt" 2>&1
    echo "ncu T=$tokens exit $?"
  done
  grep -E "stalled|Duration|Throughput|Warp Cycles|Active Warps|Hit Rate" "$OUT"/ncu_stalls_*.txt | head -90
}
# DRAM traffic of the forward at T = 65536 ((32, 8, 128) neox, N = 8 and 16) against XLA's negation over the
# same bytes (q and k as two arrays, and as one): what a plain streaming kernel reaches on this GPU.
ncu_bandwidth() {
  local metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
  metrics+=,lts__t_sector_hit_rate.pct,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread
  ncu --kernel-name regex:"forward_tuned|negate" --clock-control none --cache-control none --csv --metrics "$metrics" \
    python3 benchmarks/ncu_kernels.py --tokens 65536 --choices 8 16 --forward-only --stream > "$OUT/ncu_bandwidth.csv" 2> "$OUT/ncu_bandwidth.err"
  echo "ncu exit $?"; python3 benchmarks/ncu_summary.py "$OUT/ncu_bandwidth.csv"
}
# Where the forward's warps wait, instruction by instruction: ncu's warp-state samples over the SASS of
# (32, 8, 128) neox at T = 1 (N = 1: latency) and T = 4096 (N = 8: the mid-size gap), third call of each,
# summarised by benchmarks/ncu_source_summary.py.
ncu_source() {  # NCU_SOURCE_SPECS: tokens:N pairs to profile (default 1:1 4096:8)
  local spec tokens choice
  for spec in ${NCU_SOURCE_SPECS:-1:1 4096:8}; do
    tokens=${spec%:*} choice=${spec#*:}
    ncu --kernel-name regex:forward_tuned --launch-skip 2 --launch-count 1 --cache-control none --clock-control none \
      --section SourceCounters --section WarpStateStats --warp-sampling-interval 0 -f -o "/tmp/ncu_source_${tokens}_$choice" \
      python3 benchmarks/ncu_kernels.py --tokens "$tokens" --choices "$choice" --forward-only > "$OUT/ncu_source_${tokens}_$choice.log" 2>&1
    echo "ncu T=$tokens N=$choice exit $?"
    ncu -i "/tmp/ncu_source_${tokens}_$choice.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_source_${tokens}_$choice.csv" 2>&1
    python3 benchmarks/ncu_source_summary.py "$OUT/ncu_source_${tokens}_$choice.csv" | tee "$OUT/ncu_source_${tokens}_$choice.txt"
  done
}
# One Nsight Compute report of the third launch of the kernels matching $2 (regex), with the sections in $3 and
# warp states per SASS instruction, over `ncu_kernels.py --forward-only` with the remaining arguments: the report's
# details page (its headline figures printed), its source page and that page's summary, under $OUT/$1*.
ncu_report() {
  local name=$1 kernel=$2 section sections=()
  for section in $3; do sections+=(--section "$section"); done
  shift 3
  ncu --kernel-name "regex:$kernel" --launch-skip 2 --launch-count 1 --cache-control none --clock-control none \
    "${sections[@]}" --section SourceCounters --warp-sampling-interval 0 -f -o "/tmp/$name" \
    python3 benchmarks/ncu_kernels.py "$@" --forward-only > "$OUT/$name.log" 2>&1
  echo "ncu $name exit $?"
  ncu -i "/tmp/$name.ncu-rep" --page details > "$OUT/${name}_details.txt" 2>&1
  grep -E "Duration|Throughput|Hit Rate|Warp Cycles|Active Warps|Occupancy|Registers|Block Limit|Grid Size|Block Size|Waves" \
    "$OUT/${name}_details.txt" | head -40
  ncu -i "/tmp/$name.ncu-rep" --page source --csv --print-source sass > "$OUT/${name}_source.csv" 2>&1
  python3 benchmarks/ncu_source_summary.py "$OUT/${name}_source.csv" | tee "$OUT/${name}_source.txt" | head -40
}
# The single-pair kernel at T = 16 for NCU_SINGLE_HEADS (default: (64, 8, 128), the one small-T miss, against
# (32, 8, 128)), N = 1: speed of light, memory workload (L1 hit rate, L2 traffic), warp states, launch and occupancy.
ncu_single() {
  local heads
  for heads in ${NCU_SINGLE_HEADS:-64,8,128 32,8,128}; do
    ncu_report "ncu_single_${heads//,/_}" forward_single \
      "SpeedOfLight MemoryWorkloadAnalysis MemoryWorkloadAnalysis_Tables WarpStateStats SchedulerStats LaunchStats Occupancy" \
      --heads "$heads" --tokens 16 --choices 1
  done
}
# The generic forward ((32, 8, 80) neox, T = 16384, N = 16): warp states per instruction, occupancy and memory
# sections, as ncu_source and ncu_stalls do for the tuned kernels.
ncu_generic() {
  ncu_report ncu_generic forward_generic "WarpStateStats Occupancy MemoryWorkloadAnalysis SpeedOfLight" \
    --heads 32,8,80 --tokens 16384 --choices 16
}
# The standalone probe (benchmarks/stream_probe.cu: the kernels next to plain copies, no JAX), built into
# $1 with extra nvcc flags $2 (ptxas register reports in $1/ptxas_<source>.log).
build_probe() {
  local dir=$1 flags=$2 srcs=(benchmarks/stream_probe.cu cpp/cuda/launch.cu cpp/cuda/forward_{bf16,f16,f32}.cu cpp/cuda/backward_{bf16,f16,f32}.cu)
  mkdir -p "$dir"
  for src in "${srcs[@]}"; do
    # shellcheck disable=SC2086
    nvcc -O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -Icpp -Xptxas -v $flags -c "$src" \
      -o "$dir/$(basename "$src").o" 2> "$dir/ptxas_$(basename "$src").log" &
  done
  wait
  nvcc -arch=sm_90 "$dir"/*.o -o "$dir/probe"
}
probe_sources() { rm -rf "$1" && mkdir -p "$1" && cp -r cpp benchmarks "$1/"; }  # a copy to patch and build
stream_probe() {  # PROBE_MODE: all (default), shapes, occupancy, small or backward
  local mode=${PROBE_MODE:-all}
  build_probe /tmp/stream_probe "" && /tmp/stream_probe/probe "$mode" 2>&1 | tee "$OUT/stream_probe_$mode.log"
}
# Register limits against occupancy: every head shape's forward built as shipped and with the tuned
# forward's launch bounds asking for 4 or 5 blocks of 256 threads per SM (at most 64 / 48 registers;
# -maxrregcount is ignored where launch bounds are given), from a patched copy of cpp/; the copy with
# capped warps per SM; small T under graph replay.
probe_regs() {
  local b
  for b in default 4 5; do
    probe_sources "/tmp/src_$b"
    [ "$b" != default ] && sed -i "s/__launch_bounds__(kMaxThreads) forward_tuned_kernel/__launch_bounds__(kMaxThreads, $b) forward_tuned_kernel/" \
      "/tmp/src_$b/cpp/cuda/forward_kernels.cuh"
    (cd "/tmp/src_$b" && build_probe "/tmp/probe_$b" "") &
  done
  wait
  for b in default 4 5; do
    cp "/tmp/probe_$b/ptxas_forward_bf16.cu.log" "$OUT/ptxas_forward_bf16_$b.log"
    "/tmp/probe_$b/probe" shapes 2>&1 | tee "$OUT/probe_shapes_$b.log"
  done
  /tmp/probe_default/probe occupancy 2>&1 | tee "$OUT/probe_occupancy.log"
  /tmp/probe_default/probe small 2>&1 | tee "$OUT/probe_small.log"
}
# Kernel variants side by side (not committed): the files under benchmarks/.baseline/<name>/ overlaid on a
# copy of cpp/ for each name in $PROBE_VARIANTS ("tree" = the working tree as is); the probe in each of
# the modes in $PROBE_MODES (default: shapes).
probe_variants() {
  local v m
  for v in ${PROBE_VARIANTS:-tree}; do
    probe_sources "/tmp/src_$v"
    [ "$v" != tree ] && cp -r "benchmarks/.baseline/$v/." "/tmp/src_$v/cpp/"
    (cd "/tmp/src_$v" && build_probe "/tmp/probe_$v" "") &
  done
  wait
  for m in ${PROBE_MODES:-shapes}; do
    for v in ${PROBE_VARIANTS:-tree}; do
      "/tmp/probe_$v/probe" "$m" 2>&1 | tee "$OUT/probe_${m}_$v.log"
    done
  done
}
# A/B against kernels not in the tree: BASELINE names a folder under benchmarks/.baseline/ (not committed,
# sent with the device tool's carry) laid over cpp/; the stages in $BASELINE_STAGES run on that build with
# their output under $OUT/baseline_$BASELINE/, then the tree's cpp/ comes back and is rebuilt.
with_baseline() {
  local stage saved=/tmp/cpp_tree status=0
  rm -rf "$saved" && cp -r cpp "$saved" && cp -r "benchmarks/.baseline/$BASELINE/." cpp/
  (
    OUT="$OUT/baseline_$BASELINE" && mkdir -p "$OUT" && build
    for stage in ${BASELINE_STAGES:-variants}; do "$stage"; done
  ) || status=$?
  rm -rf cpp && cp -r "$saved" cpp && build > /dev/null || status=$?
  return $status
}
# Installs the gzipped build benchmarks/.baseline/$1.so.gz as the package's extension in the tree, and puts
# the tree on PYTHONPATH for the stages after it (without it, nothing imports the package on a fresh machine).
install_build() {
  gunzip -c "benchmarks/.baseline/$1.so.gz" \
    > "jax_qkrope/_qkrope$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')" || return 1
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
}
# Installs the carried build benchmarks/.baseline/$BUILD.so.gz for the stages after it (no build on the device).
use_build() { install_build "${BUILD:?}"; }
# A/B of extension builds made elsewhere (no build on the device): AB_BUILDS names gzipped builds
# benchmarks/.baseline/NAME.so.gz (carried; not committed). One round installs them in turn as the package's
# extension and runs a command with --out $OUT/PREFIX_NAME_ROUND, its log beside it; name the stage several
# times for several rounds (each packed when done), so drift between the builds cancels. The last build named
# stays installed.
ab_round() {  # PREFIX COMMAND...
  local prefix=$1 round name builds
  shift
  read -ra builds <<< "${AB_BUILDS:?}"
  round=$(($(find "$OUT" -maxdepth 1 -name "${prefix}_*.log" | wc -l) / ${#builds[@]} + 1))
  for name in "${builds[@]}"; do
    install_build "$name" || return 1
    "$@" --out "$OUT/${prefix}_${name}_$round" 2>&1 | tee "$OUT/${prefix}_${name}_$round.log" | grep -v "^\[" | tail -40
  done
}
# shellcheck disable=SC2086
ab_builds() { ab_round ab python3 benchmarks/kernel_variants.py --forward-only ${AB_ARGS:-}; }  # the forward, N forced
# shellcheck disable=SC2086
ab_bench() { ab_round abb python3 -m jax_qkrope.bench --name ab ${AB_BENCH_ARGS:-}; }  # auto dispatch, e.g. --backward-only
# Instructions executed and kernel time of the tuned forward, build by build (AB_BUILDS, installed as in
# ab_builds; the last stays): (32, 8, 128) neox at T = 4096 and 65536, N = 4, 8, 16, third call of each.
ab_ncu_insts() {
  local name builds metrics=gpu__time_duration.sum,smsp__inst_executed.sum,launch__registers_per_thread
  metrics+=,smsp__issue_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed
  read -ra builds <<< "${AB_BUILDS:?}"
  for name in "${builds[@]}"; do
    install_build "$name" || return 1
    ncu --kernel-name regex:forward_tuned --clock-control none --cache-control none --csv --metrics "$metrics" \
      python3 benchmarks/ncu_kernels.py --tokens 4096 65536 --choices 4 8 16 --forward-only \
      > "$OUT/ncu_insts_$name.csv" 2> "$OUT/ncu_insts_$name.err"
    echo "$name: ncu exit $?"; python3 benchmarks/ncu_summary.py "$OUT/ncu_insts_$name.csv"
  done
}
multigpu() { python3 -m pytest -q -p no:cacheprovider -rs tests/test_sharding.py 2>&1 | tee "$OUT/pytest_multigpu.log" | tail -30; python3 benchmarks/multigpu_throughput.py --out "$OUT" 2>&1 | tee "$OUT/multigpu_throughput.log" | tail -20; }

# The device tool brings back at most 8 files: everything goes back inside results.tgz alone.
pack() { tar czf /tmp/results.tgz -C "$OUT" . && mv /tmp/results.tgz "$RESULTS/results.tgz"; }

status=0
for stage in "$@"; do
  echo "=== $(date +%T) $stage"
  "$stage" || status=$?
  pack
done
echo "=== $(date +%T) done (status $status)"
exit $status
