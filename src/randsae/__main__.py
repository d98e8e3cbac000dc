import sys

from randsae.cli import main

sys.exit(main())
