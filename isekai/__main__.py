from isekai.cli import main

raise SystemExit(main())
