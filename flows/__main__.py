import sys

from flows.command import main

sys.exit(main())
