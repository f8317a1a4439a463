#!/usr/bin/env bash
# Installs what pipe and its test suite need, idempotently; quick when everything is present.
# Today that is the Rust toolchain only: the sandbox (bubblewrap), the Python venv with pytest,
# xllamacpp and the model wheels are added here by the issues whose tests need them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install Rust with rustup: https://rustup.rs" >&2
  exit 1
fi
echo "setup: $(cargo --version)"
# Fetch the locked dependencies now, so a test run needs no network beyond this point.
cargo fetch --locked
echo "setup: ok"
