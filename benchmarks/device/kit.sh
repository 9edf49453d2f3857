#!/usr/bin/env bash
# What a lent GPU machine lacks for benchmarks/device/run.sh, gathered here into .device/ (ignored
# by git; the device tool's `carry` takes it along): wheels of inferd's dependencies that the
# machine's image does not hold, for its Python (3.12), and the load generators wrk and h2load with
# the shared libraries they need beyond glibc and OpenSSL. The machine reaches no package index, so
# this runs here first:
#
#     bash benchmarks/device/kit.sh            # then: run(command="bash benchmarks/device/run.sh", carry=[".device"])
#
# PYVER=3.11 fetches wheels for this machine's Python instead (to try run.sh here).
#
# Also real NVIDIA Triton 2.51, to measure it on the same cores with the same load (scaling.py
# --triton): the C++ tritonserver, its Python backend with the stub built for $PYVER, the shared
# libraries they load from the nvidia-pytriton wheel's install (TRITON_SITE, the peer harness's venv
# by default), the harness's Python-backend model (TRITON_MODEL) and a numpy 1.x wheel for the stub
# (Triton 2.51's Python backend answers empty outputs under numpy 2), packed as .device/triton.tar.xz
# (~30 MB; unpacked it would be over the 64 MiB a device call carries).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${PYVER:-3.12}
rm -rf .device/wheels .device/bin .device/lib .device/py-spy.xz && mkdir -p .device/wheels .device/bin .device/lib
# the image has numpy, uvloop, prometheus-client, pillow, pyyaml, torch, torchvision and onnx (see
# ../.library/device/KINDS.md); inferd also needs these. grpcio and protobuf come too, in versions
# that go with the health-checking module (generated code refuses an older grpcio than its own),
# whatever the image holds: pyproject's ranges.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .device/wheels \
    orjson httptools hpack "grpcio>=1.81" "grpcio-health-checking>=1.60,<1.82" "protobuf>=5.26.1,<7"
# py-spy (a static binary in its wheel; xz-packed, run.sh unpacks it): scaling.py and gpu_resnet.py
# profile the server tree with it
spy=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$spy" "py-spy==0.4.3"
python3 -c 'import lzma, sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); name = next(n for n in z.namelist() if n.endswith("/scripts/py-spy")); open(sys.argv[2], "wb").write(lzma.compress(z.read(name)))' \
    "$spy"/py_spy-*.whl .device/py-spy.xz
rm -rf "$spy"
for tool in wrk h2load; do
    cp "$(command -v $tool)" .device/bin/
    ldd "$(command -v $tool)" | awk '/=> \//{print $3}' | grep -Ev '/lib(c|m|pthread|dl|rt|gcc_s|stdc\+\+|ssl|crypto)\.so' \
        | xargs -r -I{} cp -L {} .device/lib/
done
TRITON_SITE=${TRITON_SITE:-/opt/anchors/triton/lib/python3.11/site-packages}
TRITON_MODEL=${TRITON_MODEL:-../shared/bench/anchors/servers/triton/model.py}
if [ -f .device/triton.tar.xz ] && [ "$(cat .device/triton.pyver 2>/dev/null)" = "$PYVER numpy1" ]; then
    echo "Triton: .device/triton.tar.xz is already packed for Python $PYVER"
elif [ -x "$TRITON_SITE/pytriton/tritonserver/bin/tritonserver" ] && [ -f "$TRITON_MODEL" ]; then
    T=$TRITON_SITE/pytriton/tritonserver
    stage=$(mktemp -d)
    mkdir -p "$stage/triton/bin" "$stage/triton/lib" "$stage/triton/backends/python"
    cp "$T/bin/tritonserver" "$stage/triton/bin/"
    cp "$T/backends/python/libtriton_python.so" "$T/backends/python/triton_python_backend_utils.py" \
        "$T/python_backend_stubs/$PYVER/triton_python_backend_stub" "$stage/triton/backends/python/"
    cp "$TRITON_MODEL" "$stage/triton/model.py"
    # Triton 2.51's stub answers empty outputs under numpy 2 (the lent machine's): scaling.py gives
    # it a venv with this numpy 1.x wheel first on its path
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$stage/triton/numpy" "numpy==1.26.4"
    for binary in "$T/bin/tritonserver" "$T/backends/python/libtriton_python.so" \
            "$T/python_backend_stubs/$PYVER/triton_python_backend_stub"; do
        ldd "$binary" | awk '/nvidia_pytriton.libs/{print $3}'
    done | sort -u | xargs -r -I{} cp -L {} "$stage/triton/lib/"
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "w:xz", preset=6).add(sys.argv[2], "triton")' \
        .device/triton.tar.xz "$stage/triton"
    echo "$PYVER numpy1" > .device/triton.pyver
    rm -rf "$stage"
else
    echo "no Triton at $TRITON_SITE or no model at $TRITON_MODEL: the device run measures inferd alone"
fi
du -sh .device
