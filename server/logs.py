"""Logging for the server and the workers: plain text, or one JSON object a line for a log
pipeline (``--log-format json`` / ``HPOD_LOG_FORMAT=json``).

Ids travel as ``extra={"study_id": ..., "trial_id": ..., "job_id": ...}`` on the log call, so a
JSON line carries them as fields that can be filtered on, not only inside the message.
"""

from __future__ import annotations

import json
import logging
import time

ID_FIELDS = ("study_id", "trial_id", "job_id", "worker_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        for name in ID_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    if fmt not in ("text", "json"):
        raise SystemExit(f"--log-format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
