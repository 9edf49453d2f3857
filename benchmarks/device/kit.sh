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
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${PYVER:-3.12}
rm -rf .device && mkdir -p .device/wheels .device/bin .device/lib
# the image has numpy, grpcio, uvloop, prometheus-client, pillow, pyyaml, torch, torchvision and
# onnx (see ../.library/device/KINDS.md); inferd also needs these:
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .device/wheels \
    orjson httptools hpack grpcio-health-checking "protobuf>=5.26.1,<8"
for tool in wrk h2load; do
    cp "$(command -v $tool)" .device/bin/
    ldd "$(command -v $tool)" | awk '/=> \//{print $3}' | grep -Ev '/lib(c|m|pthread|dl|rt|gcc_s|stdc\+\+|ssl|crypto)\.so' \
        | xargs -r -I{} cp -L {} .device/lib/
done
du -sh .device
