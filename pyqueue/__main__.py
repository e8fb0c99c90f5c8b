import sys

from pyqueue.cli import main

sys.exit(main())
