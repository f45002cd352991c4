"""The admin MCP server's tools, one module per concern.

:mod:`.directory` reads agents, users and consents; :mod:`.agents` changes agents;
:mod:`.credentials` issues and rotates their credentials; :mod:`.policies` checks, tests,
simulates and replays policy changes; :mod:`.decisions` finds and explains past
decisions; :mod:`.audit` lists anomaly alerts and makes compliance reports. Each has a
``register(server, backend)``; :mod:`.backend` is what they work on, :mod:`.declare` how a
tool is declared and confirmed, :mod:`.arguments` the argument types they share.
"""
