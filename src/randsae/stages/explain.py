"""Stage ``explain`` (implementation shared with ``score`` in stages/autointerp.py)."""

from randsae.stages.autointerp import run_explain as run

__all__ = ["run"]
