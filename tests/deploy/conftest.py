"""Deploy tests: the manifests under deploy/ (static) and provisioning/start-up checks (broker).
The streams tests' helpers (`streamkit`: worker processes, settings -> environment) are shared."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "streams"))
