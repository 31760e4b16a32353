"""mmbee.simulator (see the package reading guide in mmbee/__init__.py)."""
