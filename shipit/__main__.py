from shipit.cli import run_main

run_main()
