"""Development tools on top of the shop: the benchmark suite, the chaos run, the traffic simulator.

Installed by settings.local and settings.test only; nothing in core, outbox, consumers or the
production settings imports it.
"""
