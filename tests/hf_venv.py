"""Shared by the suite-'hf' Python tests (test_record_hf.py, test_hf.py): run under a Python
that has torch and transformers."""
import os
import sys

SKIP = 77


def import_or_skip(script, modules=("torch", "transformers")):
    """Imports `modules`, else re-runs `script` under KVQ_HF_PYTHON, by default the Python of
    .venv-hf in KVQ_SOURCE_ROOT (what scripts/install-deps.sh --hf makes); else exits 77."""
    try:
        for name in modules:
            __import__(name)
        return
    except ImportError as e:
        reason = str(e)
    root = os.environ.get("KVQ_SOURCE_ROOT",
                          os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    hf_python = os.environ.get("KVQ_HF_PYTHON") or os.path.join(root, ".venv-hf", "bin",
                                                                 "python3")
    if hf_python and os.path.isfile(hf_python) and not os.environ.get("KVQ_HF_REEXEC"):
        os.environ["KVQ_HF_REEXEC"] = "1"
        os.execv(hf_python, [hf_python, os.path.abspath(script)] + sys.argv[1:])
    print(f"SKIP: torch/transformers not importable here ({reason}; KVQ_HF_PYTHON="
          f"'{hf_python}' absent); scripts/install-deps.sh --hf installs them into .venv-hf/")
    sys.exit(SKIP)
