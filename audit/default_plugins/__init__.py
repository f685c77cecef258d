"""Plugins that ship with the core and are registered the way third-party ones are (as simonw/llm does)."""
