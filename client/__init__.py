"""hpod's Python SDK and command line."""

from .sdk import AskedJob, Client, Event, HpodError, Study, Trial

__all__ = ["AskedJob", "Client", "Event", "HpodError", "Study", "Trial"]
