from vod.cli import main

raise SystemExit(main())
