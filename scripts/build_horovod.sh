#!/usr/bin/env bash
# Build and install Horovod (from its PyPI sdist) into a virtual environment, with PyTorch,
# TensorFlow and Gloo support.
#
#   bash scripts/build_horovod.sh /path/to/venv/bin/python [HOROVOD_VERSION]     (default 0.28.1)
#
# Idempotent:
#   1. Horovod already installed at that version, its PyTorch and TensorFlow extensions load and
#      have Gloo (what `horovodrun --check-build` reports)  -> nothing to do (a few seconds).
#   2. A wheel built earlier for the same Horovod, torch, TensorFlow and Python versions sits in
#      <repo>/.cache/wheels/<key>/  -> install it (no compiling).
#   3. Otherwise build the wheel (a few minutes), store it there, install it.
#
# Horovod 0.28.1 (its last release) predates the PyTorch and TensorFlow we use; the build needs
# three fixes, each marked "FIX n" below. MPI support is added only if `mpicxx` is on PATH.
# Exit status 0 means Horovod imports with PyTorch + TensorFlow + Gloo; anything else is an error,
# explained on stderr (the full build log is kept under <repo>/.cache/logs/).
#
# Optional environment: HOROVOD_BUILD_JOBS (parallel compile jobs; default from cores and memory),
# CXX (the real C++ compiler; default g++), HOROVOD_GPU_OPERATIONS (e.g. NCCL, for a GPU build).
set -euo pipefail

log() { echo "[horovod] $*"; }
die() { echo "[horovod] ERROR: $*" >&2; exit 1; }

py=${1:-}
version=${2:-0.28.1}
[[ -n $py ]] || die "usage: bash $0 /path/to/venv/bin/python [horovod_version]"
[[ -x $py ]] || die "python interpreter '$py' not found or not executable"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bindir=$(cd "$(dirname "$py")" && pwd)           # the venv's bin/ (not resolved through symlinks)
venv=$(dirname "$bindir")
cache_root=$root/.cache
export PATH="$bindir:$PATH"                       # the venv's cmake/horovodrun first, if any
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
t0=$SECONDS
tmp=$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --- What is in the venv (package metadata only: no slow framework imports) --------------------
{
  read -r pyver; read -r torch_ver; read -r tf_ver; read -r hvd_ver
} < <("$py" - <<'EOF'
import sys, importlib.metadata as md
def ver(*names):
    for n in names:
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            pass
    return "-"
print(f"{sys.version_info[0]}.{sys.version_info[1]}")
print(ver("torch"))
print(ver("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"))
print(ver("horovod"))
EOF
) || die "could not query '$py'"
[[ $torch_ver != - ]] || die "torch is not installed in $venv (install it before Horovod)"
[[ $tf_ver != - ]] || die "tensorflow is not installed in $venv (install it before Horovod)"

# pip never gets to resolve an unpinned torch: every pip call runs under a constraints file that
# pins it (the venv's own, written by ./course setup, or one pinning the torch that is installed).
constraints=$venv/constraints.txt
if [[ ! -f $constraints ]]; then
  constraints=$tmp/constraints.txt
  echo "torch==${torch_ver%%+*}" > "$constraints"
fi
pip() { PIP_CONSTRAINT=$constraints "$py" -m pip --disable-pip-version-check "$@"; }

# Quick probe (one process, ~5 s): Horovod's PyTorch and TensorFlow extensions load and were built
# with Gloo. It tests what `horovodrun --check-build` reports for these three, which takes ~25 s
# because it imports the frameworks afresh in a separate process for each line.
probe() {
  "$py" -c 'import horovod.torch as a, horovod.tensorflow as b, sys; sys.exit(not (a.gloo_built() and b.gloo_built()))' \
    >/dev/null 2>&1
}

# `horovodrun --check-build` (run through the venv's python, so a missing console script can't fool
# it); succeeds when it lists PyTorch, TensorFlow and Gloo as available.
check_out=
check_build() {
  check_out=$("$py" -c 'import sys; from horovod.runner.launch import run_commandline; sys.argv[0] = "horovodrun"; run_commandline()' --check-build 2>&1) || return 1
  grep -q '\[X\] PyTorch' <<<"$check_out" && grep -q '\[X\] TensorFlow' <<<"$check_out" \
    && grep -q '\[X\] Gloo' <<<"$check_out"
}

# --- 1. Already installed? ---------------------------------------------------------------------
if [[ $hvd_ver == "$version" ]]; then
  if probe; then
    log "Horovod $version already installed with PyTorch, TensorFlow and Gloo; nothing to do ($((SECONDS - t0)) s)"
    exit 0
  fi
  log "Horovod $version is installed but lacks PyTorch/TensorFlow/Gloo support (e.g. built against another torch/TF); reinstalling"
fi

# MPI only where an MPI compiler wrapper exists; else Gloo alone (horovodrun --gloo).
if command -v mpicxx >/dev/null 2>&1; then with_mpi=1; else with_mpi=0; fi

# The cache key: everything the compiled extensions depend on.
key="horovod-${version}_torch-${torch_ver}_tf-${tf_ver}_py${pyver}_$(uname -s)-$(uname -m)"
(( with_mpi )) && key+="_mpi"
[[ -n ${HOROVOD_GPU_OPERATIONS:-} ]] && key+="_gpu-${HOROVOD_GPU_OPERATIONS}"
wheel_dir=$cache_root/wheels/$key
log_dir=$cache_root/logs
build_log=$log_dir/$key.log
mkdir -p "$wheel_dir" "$log_dir"

# One build at a time per cache entry (two setups started at once would otherwise both compile).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$wheel_dir/.lock"
  flock 9
fi

# Install a Horovod wheel without letting pip touch torch/TensorFlow, then add the small runtime
# dependencies Horovod declares (cloudpickle, psutil, pyyaml, packaging) that are missing.
install_wheel() {
  pip install -q --no-deps --force-reinstall "$1" || return 1
  local missing
  missing=$("$py" - <<'EOF'
import importlib.metadata as md, re
missing = []
for r in md.requires("horovod") or []:
    if "extra ==" in r or "extra==" in r:
        continue
    try:
        from packaging.requirements import Requirement
        req = Requirement(r)
        if req.marker and not req.marker.evaluate():
            continue
        name = req.name
    except ImportError:
        name = re.split(r"[ ;<>=!~\[(]", r, 1)[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        missing.append(name)
print(" ".join(missing))
EOF
  ) || return 1
  if [[ -n $missing ]]; then
    log "installing Horovod's runtime dependencies: $missing"
    # shellcheck disable=SC2086
    pip install -q $missing || return 1
  fi
}

# --- 2. A cached wheel? ------------------------------------------------------------------------
shopt -s nullglob
cached=("$wheel_dir"/horovod-"$version"-*.whl)
shopt -u nullglob
if (( ${#cached[@]} )); then
  log "installing cached wheel $(basename "${cached[0]}") (.cache/wheels/$key)"
  if install_wheel "${cached[0]}" && probe; then
    log "Horovod $version installed from cache with PyTorch, TensorFlow and Gloo ($((SECONDS - t0)) s)"
    exit 0
  fi
  log "the cached wheel does not work here; removing it and rebuilding"
  rm -f "${cached[@]}"
fi

# --- 3. Build ----------------------------------------------------------------------------------
log "building Horovod $version for torch $torch_ver, TensorFlow $tf_ver, Python $pyver ($( ((with_mpi)) && echo 'Gloo + MPI' || echo 'Gloo, no MPI'))"

# Build prerequisites. No build isolation (the build must see the venv's torch and TensorFlow), so
# setuptools, wheel and packaging (imported by Horovod's setup.py) must be in the venv.
if ! "$py" -c 'import setuptools, wheel, packaging' 2>/dev/null; then
  log "installing build prerequisites (setuptools, wheel, packaging)"
  pip install -q setuptools wheel packaging || die "could not install setuptools/wheel/packaging"
fi
real_cxx=$(command -v "${CXX:-g++}" || true)
[[ -n $real_cxx ]] || die "no C++ compiler found (${CXX:-g++}); install one, e.g. 'apt-get install g++'"
command -v make >/dev/null 2>&1 || die "'make' not found; install it, e.g. 'apt-get install make'"
"$py" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || die "Python development headers (Python.h) are missing; install them, e.g. 'apt-get install python3-dev'"
# Horovod needs CMake >= 3.13: the system's, or else one pip-installed into the venv.
cmake_ok() { command -v cmake >/dev/null 2>&1 && "$py" - "$(cmake --version | head -n1)" <<'EOF'
import re, sys
m = re.search(r"(\d+)\.(\d+)", sys.argv[1])
sys.exit(not (m and (int(m[1]), int(m[2])) >= (3, 13)))
EOF
}
if ! cmake_ok; then
  log "no CMake >= 3.13 on PATH; installing cmake into the venv"
  pip install -q "cmake>=3.13,<4" || die "could not install cmake (install CMake >= 3.13 and retry)"
  cmake_ok || die "cmake still not usable"
fi

# The sdist, downloaded once and kept (a rebuild then needs no network).
sdist_dir=$cache_root/sdist
mkdir -p "$sdist_dir"
sdist=$sdist_dir/horovod-$version.tar.gz
if [[ ! -f $sdist ]]; then
  log "downloading the horovod $version sdist"
  pip download -q --no-deps --no-binary :all: --no-build-isolation "horovod==$version" -d "$tmp/sdist" >"$build_log" 2>&1 \
    || { tail -n 20 "$build_log" >&2; die "could not download horovod==$version from PyPI (log: $build_log)"; }
  mv "$tmp/sdist/horovod-$version.tar.gz" "$sdist"
fi

tf_include=$("$py" -c 'import tensorflow as tf; print(tf.sysconfig.get_include())' 2>/dev/null) \
  || die "could not import tensorflow in $venv"

# FIX 1 -- C++17. Horovod's CMake sets C++14 for the PyTorch extension (-std=c++14 in every compile
# line) and strips any -std from CXXFLAGS, but today's torch and TensorFlow headers need C++17.
# So CXX is a tiny wrapper that rewrites -std=c++11/-std=c++14 to -std=c++17 and runs the real g++.
# (It also appends -g0: Horovod builds RelWithDebInfo, and the debug info of code that includes the
# TensorFlow and torch headers makes the two extensions ~115 MB instead of ~4 MB and the build slower.
# HOROVOD_BUILD_DEBUGINFO=1 keeps it.)
nodebug=-g0
[[ ${HOROVOD_BUILD_DEBUGINFO:-0} == 1 ]] && nodebug=
mkdir -p "$tmp/bin"
cat > "$tmp/bin/cxx17" <<EOF
#!/usr/bin/env bash
# C++ compiler wrapper for the Horovod build: force C++17 (see scripts/build_horovod.sh, FIX 1)
args=()
for a in "\$@"; do
  case \$a in
    -std=c++11|-std=c++14|-std=gnu++11|-std=gnu++14) args+=(-std=c++17) ;;
    *) args+=("\$a") ;;
  esac
done
exec "$real_cxx" "\${args[@]}" $nodebug
EOF
chmod +x "$tmp/bin/cxx17"

# FIX 2 -- a moved XLA header. horovod/tensorflow/xla_mpi_ops.cc includes
# "tensorflow/compiler/xla/client/xla_builder.h"; TensorFlow now ships it as
# xla/hlo/builder/xla_builder.h. A shim directory (put on the include path) holds a header at the old
# path that includes the new one.
old_hdr=tensorflow/compiler/xla/client/xla_builder.h
shim=$tmp/include-shim
cxxflags=()
if [[ ! -f $tf_include/$old_hdr ]]; then
  new_hdr=
  for cand in xla/hlo/builder/xla_builder.h tensorflow/compiler/xla/hlo/builder/xla_builder.h \
              xla/client/xla_builder.h; do
    [[ -f $tf_include/$cand ]] && { new_hdr=$cand; break; }
  done
  [[ -n $new_hdr ]] || new_hdr=$(cd "$tf_include" && find . -name xla_builder.h | sed 's|^\./||' | head -n1)
  [[ -n $new_hdr ]] || die "TensorFlow's headers ($tf_include) have no xla_builder.h; cannot build Horovod's TensorFlow ops"
  mkdir -p "$shim/$(dirname "$old_hdr")"
  printf '// shim for Horovod %s: TensorFlow moved this header\n#include "%s"\n' "$version" "$new_hdr" > "$shim/$old_hdr"
  cxxflags+=("-I$shim")
  log "FIX 2: $old_hdr -> $new_hdr"
fi

# FIX 3 -- third-party headers TensorFlow bundles but does not put on its include path: TF's
# headers include <highwayhash/...> and "farmhash.h", which live under include/external/.
for d in external/highwayhash external/farmhash_archive/src; do
  [[ -d $tf_include/$d ]] && cxxflags+=("-I$tf_include/$d")
done

# Parallel jobs: one per core, but about 2.5 GB of memory each (TensorFlow's headers are heavy).
if [[ -z ${HOROVOD_BUILD_JOBS:-} ]]; then
  cores=$(nproc 2>/dev/null || echo 2)
  mem_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
  by_mem=$(( mem_kb / 2500000 ))
  HOROVOD_BUILD_JOBS=$(( by_mem > 0 && by_mem < cores ? by_mem : cores ))
  (( HOROVOD_BUILD_JOBS >= 1 )) || HOROVOD_BUILD_JOBS=1
fi

framework_env=(HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MXNET=1)
if (( with_mpi )); then framework_env+=(HOROVOD_WITH_MPI=1); else framework_env+=(HOROVOD_WITHOUT_MPI=1); fi

log "compiling with $HOROVOD_BUILD_JOBS job(s); log: $build_log"
(
  unset HOROVOD_WITH_MPI HOROVOD_WITHOUT_MPI HOROVOD_WITH_MXNET HOROVOD_WITHOUT_PYTORCH \
        HOROVOD_WITHOUT_TENSORFLOW HOROVOD_WITHOUT_GLOO
  export "${framework_env[@]}"
  export CXX=$tmp/bin/cxx17                                   # FIX 1
  export CXXFLAGS="${CXXFLAGS:-} ${cxxflags[*]}"              # FIX 2 and FIX 3
  export MAKEFLAGS=-j$HOROVOD_BUILD_JOBS                      # (Horovod's default is make -j8)
  echo "CXX=$CXX (-> $real_cxx)"; echo "CXXFLAGS=$CXXFLAGS"; echo "${framework_env[*]}"
  # --no-build-isolation: compile against the venv's torch and TensorFlow; --no-cache-dir: never
  # reuse a wheel pip cached from an earlier build against other versions.
  exec env PIP_CONSTRAINT="$constraints" "$py" -m pip --disable-pip-version-check wheel -v \
    --no-build-isolation --no-deps --no-cache-dir "$sdist" -w "$tmp/wheel"
) >"$build_log" 2>&1 &
build_pid=$!
# A progress line every 30 s (CMake's "[ nn%]" counter) while the compiler runs.
while kill -0 "$build_pid" 2>/dev/null; do
  for _ in $(seq 30); do kill -0 "$build_pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$build_pid" 2>/dev/null; then
    pct=$(grep -oE '^\s*\[ *[0-9]+%\]' "$build_log" 2>/dev/null | tail -n1 | tr -d ' []' || true)
    log "  ... $((SECONDS - t0)) s${pct:+, $pct done}"
  fi
done
if ! wait "$build_pid"; then
  echo "[horovod] ERROR: building Horovod $version failed after $((SECONDS - t0)) s. First errors:" >&2
  grep -m 8 -E 'error:|Error [0-9]+|No such file' "$build_log" >&2 || true
  echo "[horovod] --- last 40 lines of $build_log ---" >&2
  tail -n 40 "$build_log" >&2
  die "build failed (full log: $build_log)"
fi

shopt -s nullglob
built=("$tmp"/wheel/horovod-"$version"-*.whl)
shopt -u nullglob
(( ${#built[@]} )) || die "pip reported success but produced no wheel (log: $build_log)"
# Into the cache atomically (copy under a temporary name, then rename).
cp "${built[0]}" "$wheel_dir/.partial.whl"
mv "$wheel_dir/.partial.whl" "$wheel_dir/$(basename "${built[0]}")"
whl=$wheel_dir/$(basename "${built[0]}")
log "built $(basename "$whl") ($(du -h "$whl" | cut -f1)) in $((SECONDS - t0)) s; cached in .cache/wheels/$key"

install_wheel "$whl" || die "could not install $whl"
if ! check_build; then
  echo "$check_out" >&2
  for m in horovod.torch horovod.tensorflow; do
    "$py" -c "import $m" 2>&1 | tail -n 3 | sed "s/^/[horovod]   import $m: /" >&2 || true
  done
  die "Horovod $version installed but check-build does not list PyTorch, TensorFlow and Gloo"
fi
log "horovodrun --check-build: $(awk '/^Available/ {sec = tolower($2); sub(/:$/, "", sec)}
  /\[X\]/ {sub(/^ *\[X\] */, ""); sub(/ *$/, ""); printf "%s%s (%s)", sep, $0, sec; sep = ", "}' <<<"$check_out")"
log "Horovod $version installed with PyTorch, TensorFlow and Gloo ($((SECONDS - t0)) s)"
