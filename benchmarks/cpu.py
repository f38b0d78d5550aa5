"""CPU benchmark; the same as `optforge bench` (see optforge/bench/cpu.py).

python benchmarks/cpu.py adam radam --sizes 1e8 --repeat 5
"""

import sys

from optforge.bench.cpu import main

if __name__ == "__main__":
    sys.exit(main())
