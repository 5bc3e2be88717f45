#!/usr/bin/env bash
# Here, where PyPI is reachable, before a session's one GPU call: fill .gpu-carry/ (git-ignored; name it in the
# device run's carry) with what scripts/gpu-check.sh needs on the GPU machine, which has torch but not nnU-Net:
#   .gpu-carry/wheels/  nnunetv2 and the dependencies that machine lacks, for its Python 3.12 (x86-64), at the
#                       versions .venv has; SimpleITK (53 MB) and imagecodecs (26 MB) left out: they do not fit in
#                       the 64 MiB that travels, and the check does not need them (bench/gpu/stub, deps_check.py)
#   .gpu-carry/data/    the tiny dataset, preprocessed here with NibabelIO (bench/gpu/make_dataset.py)
# Then checks that the tree plus .gpu-carry stays under the 64 MiB limit.    Usage: bash scripts/gpu-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${GPU_CARRY:-.gpu-carry}
[ -x .venv/bin/python ] || bash scripts/install.sh
PY=.venv/bin/python
PKGS=(nnunetv2 acvl_utils batchgenerators batchgeneratorsv2 blosc2 ndindex dynamic_network_architectures nibabel
      connected-components-3d pydantic pydantic_core annotated-types typing-inspection typing_extensions watchdog isal
      py-spy yacs graphviz future unittest2 linecache2 traceback2)
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_5_x86_64 manylinux1_x86_64 any; do PLAT+=(--platform "$p"); done
rm -rf "$DEST/wheels"
mkdir -p "$DEST/wheels"
for name in "${PKGS[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLAT[@]}" -d "$DEST/wheels" "$name==$version" >/dev/null 2>&1; then
    # no wheel on PyPI (acvl_utils): build one from the sdist; it must be pure Python to suit the other machine
    "$PY" -m pip wheel -q --no-deps -w "$DEST/wheels" "$name==$version" >/dev/null 2>&1 \
      || { echo "gpu-wheels: cannot get $name==$version" >&2; exit 1; }
  fi
done
for w in "$DEST"/wheels/*.whl; do
  [[ $w =~ -(py3|py2\.py3)-none-any\.whl$|-cp3(11|12)-(abi3|cp312)-.*x86_64|-none-manylinux.*x86_64 ]] \
    || { echo "gpu-wheels: $w does not suit CPython 3.12 on x86-64" >&2; exit 1; }
done
"$PY" bench/gpu/make_dataset.py "$DEST/data"
tree=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | tail -n1 | cut -f1)
carry=$(du -sb "$DEST" | cut -f1)
wheels=$(du -cb "$DEST"/wheels/*.whl | tail -n1 | cut -f1)
n=$(find "$DEST/wheels" -name '*.whl' | wc -l)
echo "wheels: $n files, $((wheels / 1048576)) MiB; data: $(du -sh "$DEST/data" | cut -f1);" \
     "tree: $((tree / 1048576)) MiB; together $(((tree + carry) / 1048576)) MiB of the 64 MiB that travels"
if [ $((tree + carry)) -gt $((60 * 1048576)) ]; then
  echo "gpu-wheels: over 60 MiB: the device call would be refused or too close to its limit" >&2; exit 1
fi
[[ $DEST = /* ]] || git check-ignore -q "$DEST" || echo "gpu-wheels: WARNING: $DEST is not ignored by git; carry only takes ignored paths" \
  "(add '/.gpu-carry/' to .gitignore)" >&2
