import sys

from overparam.cli import main

sys.exit(main())
