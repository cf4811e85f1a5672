# Sourced by up.sh and test.sh: a virtual environment with the project installed (editable).
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import mlops_assets, pytest" 2>/dev/null || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  touch .venv/.installed
fi
# the project's bytecode, written once (compileall skips what is current): where PYTHONDONTWRITEBYTECODE is set, as on
# some CI images, no process writes it, and every one (each Ray replica and worker, each `mlops` or Dagster subprocess)
# would compile the project's modules again, about 0.2 s each
.venv/bin/python -m compileall -q -j 0 mlops_assets serving resources sensors >/dev/null
