from kdseg.cli import main

raise SystemExit(main())
