import sys

from icecache.cli.main import main

sys.exit(main())
