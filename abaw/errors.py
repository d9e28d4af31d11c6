"""The one base class for a user's error: bad input, a missing earlier stage, a refused config.

The CLI prints such an error as one line naming the file and what is wrong, and exits non-zero; anything
else is a bug and keeps its traceback. Stage packages subclass it (it imports nothing).
"""

from __future__ import annotations


class AbawError(Exception):
    """An error the user can fix; ``str(e)`` names the file, line, video or setting and what is wrong."""
