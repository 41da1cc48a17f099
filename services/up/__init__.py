"""``llmsched up``: the whole system on one machine, supervised."""

from services.up.run import UpOptions, run_up

__all__ = ["UpOptions", "run_up"]
