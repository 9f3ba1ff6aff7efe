"""`python -m service`: the same as `convserve serve`."""

import sys

from service.main import main

sys.exit(main())
