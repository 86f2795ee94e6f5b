import sys

from gastown.cli.main import main

sys.exit(main())
