from kimi_local.cli import main

raise SystemExit(main())
