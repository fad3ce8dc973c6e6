from dlinfer.cli import main

raise SystemExit(main())
