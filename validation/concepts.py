"""The CEBaB concept experiments: ``--method bottleneck`` (default; `iti concepts`: frozen-head sparse bottleneck and
concept steering) or ``--method sparsecbm`` (`iti sparsecbm`: SparseCBM's jointly trained bottleneck with a pruned
subnetwork per concept and its mask intervention). Run with ``--method X --help`` for each one's options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import main  # noqa: E402

METHODS = {"bottleneck": "concepts", "sparsecbm": "sparsecbm"}


def command(argv: list[str]) -> list[str]:
    """``--method X`` (or ``--method=X``) anywhere in ``argv`` picks the subcommand; the rest are its flags."""
    args, method = list(argv), "bottleneck"
    for i, a in enumerate(args):
        if a == "--method" and i + 1 < len(args):
            method = args[i + 1]
            del args[i : i + 2]
            break
        if a.startswith("--method="):
            method = a.split("=", 1)[1]
            del args[i]
            break
    if method not in METHODS:
        raise SystemExit(f"concepts.py: error: --method: choose one of {', '.join(METHODS)}, got {method!r}")
    return [METHODS[method], *args]


if __name__ == "__main__":
    raise SystemExit(main(command(sys.argv[1:])))
