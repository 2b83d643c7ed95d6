"""Concept bottleneck and concept steering on CEBaB (the SparseCBM idea): a thin wrapper over `iti concepts` (run with --help for every option)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["concepts", *sys.argv[1:]]))
