#!/usr/bin/env bash
# The device checks of issues 15 and 17 in one command, on a lent 16-core GPU machine (after
# benchmarks/device/kit.sh here; the device tool runs it in the repository's root, $OUT comes back):
#
#     bash benchmarks/device/run.sh [scaling] [gpu]      # both when none is named
#
# scaling: benchmarks/scaling.py, --workers 0,1,2,4,8 and Triton (when the kit holds it), server on
#          cores 0-7, load on 8-15 (~3 min).
# gpu:     benchmarks/gpu_resnet.py with its defaults (~5 min).
# decode:  benchmarks/gpu_decode.py: nvjpeg against Pillow, and the image path's parts timed (~30 s).
# gputests: the suite's GPU tests (tests/e2e/test_gpu.py; the image has pytest, not tritonclient) (~1 min).
# A device call runs 10 minutes at most and the machine goes back after 30 s idle: run the two as
# back-to-back calls (`run.sh scaling`, then `run.sh gpu`), each with carry=[".device"].
# SCALING_ARGS / GPU_ARGS add arguments (e.g. SCALING_ARGS="--server-cpus 0 --client-cpus 1" to try it here).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/inferd-device-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/inferd-site \
    .device/wheels/*.whl || exit 1
mkdir -p /tmp/inferd-bin
[ -f .device/py-spy.xz ] && python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' \
    .device/py-spy.xz /tmp/inferd-bin/py-spy && chmod +x /tmp/inferd-bin/py-spy
export PYTHONPATH="$PWD/src:/tmp/inferd-site" PATH="$PWD/.device/bin:/tmp/inferd-bin:$PATH" LD_LIBRARY_PATH="$PWD/.device/lib"
export PYTHONUNBUFFERED=1
triton=()
if [ -f .device/triton.tar.xz ]; then
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/triton.tar.xz /tmp/inferd-kit \
        && triton=(--triton /tmp/inferd-kit/triton)
fi
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(scaling gpu)
{
    date -u; nproc; nvidia-smi -L 2>/dev/null || echo "no GPU"
    python3 -c 'import sys, torch, inferd; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'
    # what Triton's Python-backend stub needs of this Python: a shared libpython
    python3 -c 'import sys, sysconfig as s; print(sys.executable, s.get_config_var("LIBDIR"), s.get_config_var("INSTSONAME"), "shared", s.get_config_var("Py_ENABLE_SHARED"))'
    wrk --version 2>&1 | head -1; h2load --version 2>&1 | head -1
} 2>&1 | tee "$OUT/machine.txt"
status=0
for part in "${parts[@]}"; do
    case $part in
        scaling) python3 benchmarks/scaling.py --out "$OUT/scaling.json" "${triton[@]}" ${SCALING_ARGS:-} 2>&1 | tee "$OUT/scaling.txt" ;;
        gpu) python3 benchmarks/gpu_resnet.py --out "$OUT/gpu_resnet.json" ${GPU_ARGS:-} 2>&1 | tee "$OUT/gpu_resnet.txt" ;;
        decode) python3 benchmarks/gpu_decode.py --out "$OUT/gpu_decode.json" 2>&1 | tee "$OUT/gpu_decode.txt" ;;
        gputests) timeout 150 python3 -m pytest -q -p no:cacheprovider -rs --timeout 120 tests/e2e/test_gpu.py \
            2>&1 | tee "$OUT/gpu_tests.txt" ;;
        *) echo "unknown part: $part (scaling, gpu, decode, gputests)"; status=2 ;;
    esac
    [ "${PIPESTATUS[0]:-0}" -ne 0 ] && status=1
done
exit $status
