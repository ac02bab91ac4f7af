"""``python -m ekko.agent``: run the agent."""

from ekko.agent.main import main

raise SystemExit(main())
