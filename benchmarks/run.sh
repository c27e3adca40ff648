#!/usr/bin/env bash
# One command: dalle2_core and DALLE2-pytorch 1.15.6 on the same configurations, alternating runs,
# table of ratios written to benchmarks/results/<device>-latest.md (extra arguments go to peer_compare.py,
# e.g. `bash benchmarks/run.sh --device cuda --precision bf16` or `--cases prior_train --rounds 3`).
#   OURS_PYTHON  python with dalle2_core installed (default: /tmp/venvtest/bin/python, else python3)
#   PEER_VENV    virtual environment for the peer, created when missing (default: /tmp/peervenv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

OURS_PYTHON="${OURS_PYTHON:-$( [ -x /tmp/venvtest/bin/python ] && echo /tmp/venvtest/bin/python || command -v python3 )}"
if ! "$OURS_PYTHON" -c "import dalle2_core" 2>/dev/null; then
  echo "error: $OURS_PYTHON cannot import dalle2_core; set OURS_PYTHON to the project's environment" >&2
  exit 2
fi
torch_version="$("$OURS_PYTHON" -c "import torch; print(torch.__version__.split('+')[0])")"

PEER_VENV="${PEER_VENV:-/tmp/peervenv}"
if ! "$PEER_VENV/bin/python" -c "import dalle2_pytorch" 2>/dev/null; then
  echo "creating $PEER_VENV with dalle2-pytorch==1.15.6 and torch==$torch_version (the peer is never a project dependency)" >&2
  python3 -m venv "$PEER_VENV"
  "$PEER_VENV/bin/pip" install --quiet "torch==$torch_version" "dalle2-pytorch==1.15.6"
fi
peer_torch="$("$PEER_VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")"
if [ "$peer_torch" != "$torch_version" ]; then
  echo "warning: torch differs between the environments (ours $torch_version, peer $peer_torch)" >&2
fi

BENCH_COMMAND="bash benchmarks/run.sh$(printf ' %q' "$@")"
export BENCH_COMMAND
exec "$OURS_PYTHON" "$here/peer_compare.py" --ours-python "$OURS_PYTHON" --peer-python "$PEER_VENV/bin/python" "$@"
