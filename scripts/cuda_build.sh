#!/usr/bin/env bash
# Builds `pipe` with the cargo feature `cuda` on a machine with no GPU and no CUDA toolkit, for a
# run on a lent NVIDIA H100/H200 (sm_90). Idempotent: a rerun only recompiles what changed, so
# after source edits it is the rebuild command too. CI never runs it (`cuda` is not a default
# feature; see /work/shared/CUDA.md for the facts it builds on).
#
#   scripts/cuda_build.sh            # build, then print how to run the result on the GPU machine
#
# Why each piece:
#   1. `.cuda/venv`: PyPI's CUDA 13.0 wheels carry a toolkit (nvcc, headers, cudart, cuBLAS,
#      cuRAND, NVRTC) under site-packages/nvidia/cu13; Debian has only CUDA 11.8. nvcc stays at
#      13.0.x: the lent machine's driver (580) JITs PTX only up to ISA 9.0.
#   2. `.cuda/link`: candle's `cuda` feature links cudarc dynamically, so the linker wants
#      unversioned libcuda/libcublas/libcublasLt/libcurand/libcudart/libnvrtc .so files. The
#      wheels ship only versioned ones and no driver: symlinks, plus a stub libcuda.so (soname
#      libcuda.so.1) with empty `cu*` functions named after cudarc's driver bindings. The real
#      driver replaces the stub at run time.
#   3. `.cuda/build`: the package as cargo sees it: symlinks to the repo's files, except private
#      copies of Cargo.toml and Cargo.lock, so the lock entries the `cuda` feature adds (cudarc,
#      candle-kernels, ...) never touch the repo's Cargo.lock.
#   4. `target-cuda`: its own target dir, so the CPU build stays untouched; candle-kernels (~14
#      min of the ~20 min clean build on 2 cores) stays cached there. Cargo runs under nice -n 19.
#   5. `.cuda/dist` (~10 MB), what to carry to the GPU machine: `pipe.xz` (the stripped binary,
#      ~63 MB unpacked, rpath $ORIGIN), libcudart.so.13 and `run.sh`, which unpacks pipe and puts
#      the GPU machine's PyTorch cu13 libraries (cuBLAS/cuRAND, >500 MB) on LD_LIBRARY_PATH.
#      There: the device tool's run with carry [".cuda/dist"], command `.cuda/dist/run.sh ARGS`.
# Environment: CUDA_COMPUTE_CAP (default 90), CUDA_BUILD_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
CUDA_DIR=$REPO/.cuda
VENV=$CUDA_DIR/venv
LINK=$CUDA_DIR/link
MIRROR=$CUDA_DIR/build
DIST=$CUDA_DIR/dist
TARGET=$REPO/target-cuda
JOBS=${CUDA_BUILD_JOBS:-2}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
)

die() { echo "cuda_build: error: $*" >&2; exit 1; }
say() { echo "cuda_build: $*" >&2; }
trap 'die "line $LINENO failed: $BASH_COMMAND"' ERR

for tool in cargo cc c++ strip xz /usr/bin/python3; do
  command -v "$tool" >/dev/null || die "'$tool' not found (needs a Rust toolchain, gcc/g++, binutils, python3)"
done

# ---------------------------------------------------------------------------------------------
# 1. The toolkit from PyPI wheels, in a venv of its own
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  /usr/bin/python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
fi
norm() { tr 'A-Z_' 'a-z-'; }   # the pinned names have no dots
installed=$("$VENV/bin/python" -m pip freeze 2>/dev/null | norm)
missing=()
for w in "${WHEELS[@]}"; do
  grep -qxF "$(printf '%s' "$w" | norm)" <<<"$installed" || missing+=("$w")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${WHEELS[@]}" \
    || die "pip install of the CUDA 13.0 wheels failed (network? PyPI?)"
else
  say "CUDA wheels present"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export CUDA_HOME=$SITE/nvidia/cu13
for f in bin/nvcc include/cuda.h include/cuda_runtime.h nvvm lib/libcudart.so.13 \
         lib/libcublas.so.13 lib/libcublasLt.so.13 lib/libcurand.so.10 lib/libnvrtc.so.13; do
  [ -e "$CUDA_HOME/$f" ] || die "$CUDA_HOME/$f missing: the wheels' layout changed? (rm -rf $VENV and rerun)"
done
export PATH=$CUDA_HOME/bin:$PATH
nvcc_version=$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
[ "$nvcc_version" = 13.0 ] || die "nvcc is release '$nvcc_version', want 13.0 (the driver's PTX limit)"

# ---------------------------------------------------------------------------------------------
# 3. (before 2: the stub's names come from the cudarc that the lock picks) the package mirror
mkdir -p "$MIRROR"
find "$MIRROR" -maxdepth 1 -type l ! -exec test -e {} \; -delete      # entries gone from the repo
for entry in "$REPO"/* "$REPO"/.[!.]*; do
  name=$(basename "$entry")
  case "$name" in
    .git|.cuda|target|target-cuda|Cargo.toml|Cargo.lock|'.[!.]*') continue ;;
  esac
  [ -L "$MIRROR/$name" ] || ln -s "$entry" "$MIRROR/$name"
done
cmp -s "$REPO/Cargo.toml" "$MIRROR/Cargo.toml" || cp "$REPO/Cargo.toml" "$MIRROR/Cargo.toml"
# The repo's lock seeds ours; when the repo's lock changes, it seeds ours again.
if ! cmp -s "$REPO/Cargo.lock" "$CUDA_DIR/Cargo.lock.seed"; then
  cp "$REPO/Cargo.lock" "$MIRROR/Cargo.lock"
  cp "$REPO/Cargo.lock" "$CUDA_DIR/Cargo.lock.seed"
fi
CARGO=(nice -n 19 cargo)
"${CARGO[@]}" fetch --manifest-path "$MIRROR/Cargo.toml" -q \
  || die "cargo fetch failed (network? crates.io?)"
cudarc_version=$(awk '/^name = "cudarc"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$MIRROR/Cargo.lock")
[ -n "$cudarc_version" ] || die "no cudarc in $MIRROR/Cargo.lock: does Cargo.toml still define the cuda feature?"
CUDARC_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc_version" 2>/dev/null | head -1)
[ -d "$CUDARC_SRC/src/driver/sys" ] || die "cudarc $cudarc_version sources not found under ${CARGO_HOME:-$HOME/.cargo}/registry/src"

# ---------------------------------------------------------------------------------------------
# 2. The link-stub folder
mkdir -p "$LINK"
for lib in "$CUDA_HOME"/lib/lib*.so.*; do
  base=$(basename "$lib"); base=${base%%.so.*}.so
  [ "$(readlink "$LINK/$base" 2>/dev/null)" = "$lib" ] || ln -sfn "$lib" "$LINK/$base"
done
{ grep -rhoE '\bfn cu[A-Z][A-Za-z0-9_]*\(' "$CUDARC_SRC/src/driver/sys" || true; } \
  | sed 's/^fn //; s/($//' | sort -u >"$LINK/libcuda.names.new"
[ -s "$LINK/libcuda.names.new" ] || die "found no cu* driver functions in $CUDARC_SRC/src/driver/sys"
if [ -f "$LINK/libcuda.so" ] && cmp -s "$LINK/libcuda.names.new" "$LINK/libcuda.names"; then
  rm "$LINK/libcuda.names.new"
  say "libcuda.so stub present"
else
  mv "$LINK/libcuda.names.new" "$LINK/libcuda.names"
  sed 's/.*/void &(void) {}/' "$LINK/libcuda.names" >"$LINK/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/libcuda_stub.c" \
    || die "compiling the libcuda.so stub failed"
  say "libcuda.so stub: $(wc -l <"$LINK/libcuda.names") functions (cudarc $cudarc_version)"
fi

# ---------------------------------------------------------------------------------------------
# 4. The build
export RUSTFLAGS="-L native=$LINK -C link-arg=-Wl,-rpath-link,$CUDA_HOME/lib -C link-arg=-Wl,-rpath,\$ORIGIN"
say "cargo build --release --features cuda (nice -n 19, -j $JOBS, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
start=$(date +%s)
"${CARGO[@]}" build --release --features cuda -j "$JOBS" --manifest-path "$MIRROR/Cargo.toml" \
  --target-dir "$TARGET" --bin pipe \
  || die "cargo build failed (a compile error in src/ is the repo's; a link error is this script's)"
say "build took $(( $(date +%s) - start )) s"

# ---------------------------------------------------------------------------------------------
# 5. What to carry to the GPU machine. The stripped binary is ~63 MB (33 MB of it sm_90 fatbin):
# too close to the device tool's 64 MiB carry limit, so it travels xz-compressed (~10 MB) and
# run.sh unpacks it there (with python3's lzma: no xz needed on that machine).
mkdir -p "$DIST"
if [ ! -f "$DIST/pipe.xz" ] || [ "$TARGET/release/pipe" -nt "$DIST/pipe.xz" ]; then
  say "compressing the stripped binary into $DIST/pipe.xz"
  strip -o "$CUDA_DIR/pipe.stripped" "$TARGET/release/pipe"
  nice -n 19 xz -6 -T "$JOBS" -c "$CUDA_DIR/pipe.stripped" >"$DIST/pipe.xz.new"
  mv "$DIST/pipe.xz.new" "$DIST/pipe.xz"
  rm -f "$CUDA_DIR/pipe.stripped" "$DIST/pipe" "$DIST/.pipe.xz.cksum"   # unpacked copies are stale
fi
cmp -s "$CUDA_HOME/lib/libcudart.so.13" "$DIST/libcudart.so.13" \
  || cp -L "$CUDA_HOME/lib/libcudart.so.13" "$DIST/libcudart.so.13"
cat >"$DIST/run.sh.new" <<'RUN'
#!/bin/sh
# Runs the CUDA build of pipe on the lent GPU machine (made by scripts/cuda_build.sh): unpacks
# pipe.xz beside itself when new, then puts the machine's PyTorch CUDA 13 libraries (cuBLAS,
# cuRAND: site-packages/nvidia/cu13/lib) and this folder (libcudart) on LD_LIBRARY_PATH.
#   .cuda/dist/run.sh <pipe arguments>        PYTHON=... picks the python that has PyTorch cu130
set -e
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
sum=$(cksum <"$here/pipe.xz")
if [ ! -x "$here/pipe" ] || [ "$(cat "$here/.pipe.xz.cksum" 2>/dev/null)" != "$sum" ]; then
  "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$here/pipe.xz" "$here/pipe.tmp"
  chmod +x "$here/pipe.tmp" && mv "$here/pipe.tmp" "$here/pipe" && echo "$sum" >"$here/.pipe.xz.cksum"
fi
cu13=$("$py" -c 'import nvidia, os; print(*[p for d in nvidia.__path__ for p in [os.path.join(d, "cu13", "lib")] if os.path.isdir(p)][:1])' 2>/dev/null) || true
if [ -z "$cu13" ]; then
  echo "run.sh: $py finds no site-packages/nvidia/cu13/lib (cuBLAS/cuRAND of PyTorch cu130)" >&2
  exit 1
fi
export LD_LIBRARY_PATH="$cu13:$here${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/pipe" "$@"
RUN
chmod +x "$DIST/run.sh.new" && mv "$DIST/run.sh.new" "$DIST/run.sh"
du -sh "$DIST"/* >&2
size=$(du -sm "$DIST" | cut -f1)
[ "$size" -lt 40 ] || die "$DIST is $size MiB: too big to carry (64 MiB limit, repo included)"
cat >&2 <<'EOF'
cuda_build: done. On the GPU machine: the device tool's run with carry [".cuda/dist"] and command
  .cuda/dist/run.sh <pipe arguments>
EOF
