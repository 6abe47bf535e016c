from minigpt4.serve.cli import main

raise SystemExit(main())
