"""mmbee.graph (see the package reading guide in mmbee/__init__.py)."""
