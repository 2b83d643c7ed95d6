"""honest_llama's validation/edit_weight.py, as a thin wrapper over `iti bake` (run with --help for every option)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["bake", *sys.argv[1:]]))
