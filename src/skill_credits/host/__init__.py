"""For host applications, not the server: ``client`` (``SkillCreditsClient``, which needs
only httpx and msgspec) and ``plugin`` (billing a host Litestar app's routes).

This file imports nothing, so the client imports without the server's packages.
"""
