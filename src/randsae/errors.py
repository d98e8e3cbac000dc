"""The errors randsae anticipates.

Each is raised with a message that names the problem (the config key, file, artifact or
latent) and, where there is one, what to do about it. The command line prints such an error
as one line in the job's log, without a traceback, and exits with status 2; any other
exception is a bug and keeps its traceback. Each error class also keeps the built-in base it
always had (ValueError, RuntimeError, FileNotFoundError), so callers that catch those still work.
"""

from __future__ import annotations


class RandsaeError(Exception):
    """An anticipated error: its message is all a user needs."""
