import sys

from kfacemtl.cli import main

sys.exit(main())
