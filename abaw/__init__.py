"""abaw: valence-arousal estimation on Aff-Wild2."""
import os as _os

# albumentations asks PyPI for its latest version on import: offline that is a stall, and a run
# should never reach the network on its own (weights come from a local file or the hub, when asked).
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
