import sys

from clinic_lib.cli import main

sys.exit(main())
