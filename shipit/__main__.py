"""`python -m shipit`: the command with the interpreter's usual exit, so that wrappers such as
`python -m cProfile -m shipit` still get to write what they collected (the installed `shipit`
command leaves faster, see `cli.run_main`)."""

import sys

from shipit.cli import main

sys.exit(main())
