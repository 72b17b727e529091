from emgui.cli import main

raise SystemExit(main())
