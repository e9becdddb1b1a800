from gpreg.cli import main

raise SystemExit(main())
