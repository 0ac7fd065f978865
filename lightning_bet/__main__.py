import sys

from lightning_bet.cli import main

sys.exit(main())
