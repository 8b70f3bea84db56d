"""Output-path checks shared by the export commands: the runtime's, which every stage uses."""
from __future__ import annotations

from lfm.runtime.files import output_problem

__all__ = ["output_problem"]
