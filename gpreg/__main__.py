from gpreg.tools.cli import main

raise SystemExit(main())
