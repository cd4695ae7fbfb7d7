from mc.cli import main

raise SystemExit(main())
