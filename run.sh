#!/usr/bin/env bash
# The main job on a fresh machine: install everything, then train the quick supernet on Fashion-MNIST
# (digits where it is missing), fit its predictors and specialize it for cpu, pixel1 and note10.
# Rerunning continues where a stopped run left off.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; the job will use scikit-learn's digits"
fi
python3 -m pip install -q -e ".[test]"
exec ofa quickstart --run checkpoints/quickstart "$@"
