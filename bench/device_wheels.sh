#!/usr/bin/env bash
# The wheels the GPU machine lacks (grain, array_record, ml_collections, tensorboardX, portpicker; their other needs
# are in its image), at the versions this machine runs, for its Python 3.12, into .whl/ (git ignores it). Each device
# call then carries .whl and starts with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
#
#   bash bench/device_wheels.sh      (repo root, on the development machine, after pip install -e ".[test]")
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl
for name in grain array_record ml_collections tensorboardX portpicker; do
  version=$(python3 -c "import importlib.metadata as m; print(m.version('$name'))")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version"
done
ls -la .whl
