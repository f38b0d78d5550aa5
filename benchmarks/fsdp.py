"""FSDP2 benchmark; the same as `optforge bench --fsdp` (see optforge/bench/fsdp.py).

python benchmarks/fsdp.py --ranks 2 --repeat 40
"""

import sys

from optforge.bench.fsdp import main

if __name__ == "__main__":
    sys.exit(main())
