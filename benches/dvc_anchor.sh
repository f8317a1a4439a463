#!/usr/bin/env bash
# Reproduce the "Pipeline bookkeeping — DVC" anchor from shared/ANCHORS.md so it can be
# measured side by side with `pipe` on the same machine in the same run.
#
# Usage: benches/dvc_anchor.sh N_TRIAL_FILES [RUNS]      (RUNS defaults to 7)
#
# Builds, in a throw-away temp dir, a git+DVC project with a 7-stage pipeline shaped like
# ours (trial -> extract -> format -> train -> convert -> eval -> report; trial writes
# N JSON files of ~5 KB into a directory output, train and convert write 20 MB each),
# runs `dvc repro` once, then times whole-process wall time of a no-op `dvc status` and a
# no-op `dvc repro`, RUNS times each, and prints the medians, one key=value line each:
#   dvc_status_median_s=0.47 files=300
#   dvc_repro_median_s=0.65 files=300
# plus extra lines (dvc_version_median_s, *_maxrss_mib, setup timing) for context.
#
# Environment:
#   DVC_VENV      venv location (default $HOME/.cache/pipe-bench/dvc-venv)
#   DVC_VERSION   DVC version to install (default 3.67.1, the anchor's version)
#   KEEP_PROJECT=1  don't delete the temp project on exit (its path is printed)
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
    echo "usage: $0 N_TRIAL_FILES [RUNS]" >&2
    exit 2
fi
N=$1
RUNS=${2:-7}
if [[ ! "$RUNS" =~ ^[0-9]+$ || "$RUNS" -lt 1 ]]; then
    echo "RUNS must be a positive integer" >&2
    exit 2
fi

DVC_VENV=${DVC_VENV:-$HOME/.cache/pipe-bench/dvc-venv}
WANT=${DVC_VERSION:-3.67.1}
PY=${PYTHON:-python3}

log() { echo "# $*" >&2; }

# ---------------------------------------------------------------- 1. venv with DVC
installed_version() {
    [[ -x "$DVC_VENV/bin/python" ]] || return 1
    "$DVC_VENV/bin/python" - <<'EOF' 2>/dev/null
from importlib.metadata import version
print(version("dvc"))
EOF
}

have=$(installed_version || true)
if [[ "$have" != "$WANT" ]]; then
    if [[ ! -x "$DVC_VENV/bin/python" ]]; then
        log "creating venv at $DVC_VENV"
        mkdir -p "$(dirname "$DVC_VENV")"
        "$PY" -m venv "$DVC_VENV"
        "$DVC_VENV/bin/python" -m pip install -q --upgrade pip >&2
    fi
    log "installing dvc==$WANT"
    if ! "$DVC_VENV/bin/python" -m pip install -q "dvc==$WANT" >&2; then
        # Fall back to the newest 3.x that the index offers.
        fallback=$("$DVC_VENV/bin/python" -m pip index versions dvc 2>/dev/null |
            sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' |
            grep -E '^3\.' | head -n1 || true)
        if [[ -z "$fallback" ]]; then
            echo "cannot install dvc==$WANT and found no 3.x fallback" >&2
            exit 1
        fi
        echo "dvc_fallback_version=$fallback (wanted $WANT)"
        "$DVC_VENV/bin/python" -m pip install -q "dvc==$fallback" >&2
    fi
    have=$(installed_version)
fi
DVC="$DVC_VENV/bin/dvc"
echo "dvc_version=$have"

# Keep DVC from phoning home (analytics / update check) during timing.
export DVC_NO_ANALYTICS=1
export DVC_NO_UPDATER=1   # harmless if unknown
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid

# ---------------------------------------------------------------- 2. project
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dvc-anchor.XXXXXX")
cleanup() {
    if [[ "${KEEP_PROJECT:-0}" == 1 ]]; then
        log "kept project at $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
# Keep DVC's per-repo state/index ("site cache", normally /var/tmp/dvc/repo/<hash>) inside
# the temp dir so it is cleaned up too; the env var covers `dvc init` itself.
export DVC_SITE_CACHE_DIR="$WORK/site-cache"
PROJ="$WORK/proj"
mkdir -p "$PROJ"
cd "$PROJ"

git init -q .
"$DVC" init -q
"$DVC" config core.analytics false
"$DVC" config core.check_update false 2>/dev/null || true
# Same in the repo config, for anyone poking at a KEEP_PROJECT=1 copy by hand.
"$DVC" config core.site_cache_dir "$WORK/site-cache"

mkdir -p src
echo "seed: 1234" > params.yaml
echo "prompt template v1" > src/template.txt

# Stage commands: cheap, deterministic one-liners (system python3 / coreutils).
cat > dvc.yaml <<EOF
stages:
  trial:
    cmd: >-
      python3 -c "import os,json;os.makedirs('data/trials',exist_ok=True);pad='x'*4900;
      [open('data/trials/t%06d.json'%i,'w').write(json.dumps({'id':i,'score':(i*7919)%1000,'pad':pad}))
      for i in range($N)]"
    deps:
      - params.yaml
    outs:
      - data/trials
  extract:
    cmd: >-
      python3 -c "import os,json;fs=sorted(os.listdir('data/trials'));
      json.dump({'n':len(fs),'first':fs[0],'last':fs[-1]},open('data/extract.json','w'))"
    deps:
      - data/trials
    outs:
      - data/extract.json
  format:
    cmd: cat src/template.txt data/extract.json > data/format.txt
    deps:
      - data/extract.json
      - src/template.txt
    outs:
      - data/format.txt
  train:
    cmd: >-
      python3 -c "import hashlib;b=hashlib.sha256(open('data/format.txt','rb').read()).digest()*32;
      open('data/model.bin','wb').write(b*(20*1024*1024//len(b)))"
    deps:
      - data/format.txt
    outs:
      - data/model.bin
  convert:
    cmd: >-
      python3 -c "d=open('data/model.bin','rb').read();open('data/model.gguf','wb').write(b'GGUF'+d[4:])"
    deps:
      - data/model.bin
    outs:
      - data/model.gguf
  eval:
    cmd: >-
      python3 -c "import hashlib,json;h=hashlib.md5(open('data/model.gguf','rb').read()).hexdigest();
      json.dump({'model_md5':h,'acc':0.5},open('data/eval.json','w'))"
    deps:
      - data/model.gguf
      - data/format.txt
    outs:
      - data/eval.json
  report:
    cmd: (echo '# report'; cat data/eval.json) > data/report.md
    deps:
      - data/eval.json
    outs:
      - data/report.md
EOF

git add -A
git commit -q -m "pipeline"

log "initial dvc repro with N=$N trial files (may take a while)"
t0=$EPOCHREALTIME
"$DVC" repro -q >&2
t1=$EPOCHREALTIME
git add -A
git commit -q -m "repro"
echo "dvc_initial_repro_s=$("$PY" -c "print(round($t1-$t0,2))") files=$N"

# Sanity: the pipeline really is up to date and the trial dir has N files.
got=$(find data/trials -type f | wc -l)
[[ "$got" -eq "$N" ]] || { echo "expected $N trial files, found $got" >&2; exit 1; }
st=$("$DVC" status 2>&1)
if ! grep -q "up to date" <<<"$st"; then
    echo "dvc status is not clean after repro:" >&2
    echo "$st" >&2
    exit 1
fi

# ---------------------------------------------------------------- 3. timing
# One python process per command kind so RUSAGE_CHILDREN's max RSS is per command.
bench() { # name runs cmd...
    "$PY" - "$@" <<'EOF'
import resource, statistics, subprocess, sys, time
name, runs, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ts = []
for _ in range(runs):
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ts.append(time.perf_counter() - t)
    if r.returncode != 0:
        sys.stderr.write(r.stderr.decode())
        sys.exit(f"{name}: exit {r.returncode}")
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB on Linux
print(f"{name}_median_s={statistics.median(ts):.2f}")
sys.stderr.write(f"# {name}: median {statistics.median(ts):.3f} s; runs {' '.join(f'{x:.3f}' for x in ts)}; max RSS {rss:.0f} MiB\n")
print(f"{name}_maxrss_mib={rss:.0f}")
EOF
}

out=$(bench dvc_version "$RUNS" "$DVC" --version)
echo "$(sed -n 1p <<<"$out")"
out=$(bench dvc_status "$RUNS" "$DVC" status)
echo "$(sed -n 1p <<<"$out") files=$N"
status_rss=$(sed -n 2p <<<"$out")
out=$(bench dvc_repro "$RUNS" "$DVC" repro)
echo "$(sed -n 1p <<<"$out") files=$N"
repro_rss=$(sed -n 2p <<<"$out")
echo "$status_rss files=$N"
echo "$repro_rss files=$N"

# The no-op repro must not have changed anything.
git diff --quiet -- dvc.lock || { echo "dvc.lock changed during no-op repro" >&2; exit 1; }
