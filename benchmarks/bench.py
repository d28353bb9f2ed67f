"""Our trainer and probe against the ordinary PyTorch way (issue 4), the same as `overparam bench`:
`python benchmarks/bench.py --help` lists the sizes; `--out` names the CSV, `--quick` adds the quick preset.
"""

import sys

from overparam.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
