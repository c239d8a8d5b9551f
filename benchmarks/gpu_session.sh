#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one run: the gpu test tier, the GPU training benchmark,
# the profiler and the README's two trainings.  Logs and JSON go to $OUT (default ./gpu-out).
#
# On the machine (which has no network): first, here, in the checkout,
#     bash ../shared/gpu/prepare-carry.sh      # NumPy 2.4 and nvmath-python wheels, MNIST, into .carry/
# then run this from the repository root with .carry carried along:
#     bash benchmarks/gpu_session.sh
# Each part has its own time limit; a failing part is reported and the rest still runs.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
LOG="$OUT/session.log"
: > "$LOG"
export PYTHONUNBUFFERED=1

if [ -f .carry/setup.sh ]; then
    bash .carry/setup.sh >> "$LOG" 2>&1 || echo "setup failed (see $LOG)"
    export PYTHONPATH=/tmp/site GPUNN_DATA_DIR="$PWD/.carry/mnist"
fi

part() {  # part NAME SECONDS COMMAND...: run, log, print its status and the end of its output
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "=== $name" >> "$LOG"
    timeout "$limit" "$@" > "$OUT/.part" 2>&1
    local rc=$?
    cat "$OUT/.part" >> "$LOG"
    echo "=== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$LOG"
    tail -n "${TAIL:-6}" "$OUT/.part"
    rm -f "$OUT/.part"
}

part device 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv;
python3 -c "import sys, numpy, numba, numba_cuda, cupy, nvmath; print(sys.version.split()[0], \"numpy\", numpy.__version__,
\"numba\", numba.__version__, \"numba-cuda\", numba_cuda.__version__, \"cupy\", cupy.__version__, \"nvmath\", nvmath.__version__)"'
TAIL=30 part gpu-tests 240 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4
TAIL=40 part benchmark 200 python3 benchmarks/gpu_train_speed.py --epochs 5 --json "$OUT/gpu_train_speed.json"
part train-default 90 python3 -m gpunn train --backend cuda --metrics-json "$OUT/train_default.json"
part train-primer 90 python3 examples/seed_network.py --backend cuda --metrics-json "$OUT/train_primer.json"
# the kernel lab: every version of the three versioned families beside the built-ins (issue 17)
for op in softmax softmax-cross-entropy gemm; do
    TAIL=14 part "bench-$op" 90 python3 -m gpunn bench "$op" --reps 20 --version examples/my_softmax.py:naive \
        --json "$OUT/bench_$op.json" --plot "$OUT/bench_$op.png"
done
TAIL=30 part profile 90 python3 -m gpunn profile --backend cuda --reps 50 --json "$OUT/profile_default.json"
# issue 18: the kernels per step and a graph replay's time of the fused paths (each behind its option)
TAIL=12 part profile-classifier 60 python3 -m gpunn profile --backend cuda --reps 50 \
    --version softmax-cross-entropy=classifier --json "$OUT/profile_classifier.json"
TAIL=12 part profile-own-gemm 60 python3 -m gpunn profile --backend cuda --reps 50 --gemm numba \
    --version softmax-cross-entropy=classifier --json "$OUT/profile_own_gemm.json"
TAIL=12 part profile-tf32 60 python3 -m gpunn profile --backend cuda --reps 50 --precision tf32 \
    --json "$OUT/profile_tf32.json"
PRIMER="--hidden 16,16 --activation sigmoid --output-activation sigmoid --loss mse --batch-size 100 --lr 6 --momentum 0 --no-nesterov"
TAIL=12 part profile-primer 60 python3 -m gpunn profile --backend cuda --reps 50 $PRIMER --json "$OUT/profile_primer.json"
TAIL=12 part profile-primer-fused 60 python3 -m gpunn profile --backend cuda --reps 50 $PRIMER --fused-step \
    --json "$OUT/profile_primer_fused.json"
part train-primer-fused 90 python3 -m gpunn train --backend cuda $PRIMER --epochs 30 --fused-step \
    --metrics-json "$OUT/train_primer_fused.json"
# where a second run's start-up goes (cProfile of the quick start's command, its kernel cache warm by now)
TAIL=45 part startup-profile 60 python3 -c 'import cProfile, pstats, sys
sys.argv = ["gpunn", "train", "--backend", "cuda", "--epochs", "1"]
import time; t0 = time.perf_counter()
cProfile.run("import gpunn.cli; gpunn.cli.main(sys.argv[1:])", "/tmp/startup.prof")
pstats.Stats("/tmp/startup.prof").sort_stats("cumtime").print_stats(30)'
echo "logs in $OUT"
