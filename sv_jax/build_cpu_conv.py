"""Builds the oneDNN convolutions (sv_jax/models/cpu_conv.py) ahead of first use and prints the library's path.

    python -m sv_jax.build_cpu_conv

Exit status 2 with the reason on one line where they cannot be built (no C++ compiler, no oneDNN headers).
"""

import sys

from sv_jax.models import cpu_conv


def main() -> int:
    reason = cpu_conv.unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    print(cpu_conv.library_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
