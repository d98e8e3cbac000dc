"""Stage ``score`` (implementation shared with ``explain`` in stages/autointerp.py)."""

from randsae.stages.autointerp import run_score as run

__all__ = ["run"]
