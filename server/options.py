"""Server options beyond the study manager's: TLS, tokens, limits, metrics, log format and the
live Optuna mirror.

Each has a command-line flag on ``hpod server`` and an environment variable (the flag wins), so
a container is configured by environment alone (see ``deploy/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw.strip() else default


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the server, so that no client can exhaust it."""

    max_message_bytes: int = 16 * 1024 * 1024
    max_parameters: int = 256  # search-space parameters per study
    max_trials: int = 100_000  # trials one study may create
    max_watches: int = 64  # concurrent WatchStudy streams per tenant
    # Names and ids (study, parameter, trainer, metric, job and client ids): bounded so that
    # none is stored, listed or echoed in an error at any length.
    max_name_length: int = 256
    max_spec_bytes: int = 256 * 1024  # one StudySpec, serialised (CreateStudy, PlanStudy)
    max_choices: int = 10_000  # categorical choices of one search space, all parameters

    @classmethod
    def from_env(cls) -> Limits:
        d = cls()
        return cls(max_message_bytes=env_int("HPOD_MAX_MESSAGE_BYTES", d.max_message_bytes),
                   max_parameters=env_int("HPOD_MAX_PARAMETERS", d.max_parameters),
                   max_trials=env_int("HPOD_MAX_TRIALS", d.max_trials),
                   max_watches=env_int("HPOD_MAX_WATCHES", d.max_watches),
                   max_name_length=env_int("HPOD_MAX_NAME_LENGTH", d.max_name_length),
                   max_spec_bytes=env_int("HPOD_MAX_SPEC_BYTES", d.max_spec_bytes),
                   max_choices=env_int("HPOD_MAX_CHOICES", d.max_choices))


@dataclass(frozen=True)
class TLS:
    cert: str  # PEM server certificate (chain)
    key: str  # PEM private key
    client_ca: str = ""  # PEM CA bundle: when set, clients must present a certificate it signed

    def credentials(self) -> object:
        import grpc

        ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        pair = [(Path(self.key).read_bytes(), Path(self.cert).read_bytes())]
        return grpc.ssl_server_credentials(pair, root_certificates=ca,
                                           require_client_auth=ca is not None)


@dataclass(frozen=True)
class ServerOptions:
    tls: TLS | None = None
    tokens_file: str = ""  # see server/service/auth.py for the format; HPOD_TOKENS works too
    limits: Limits = field(default_factory=Limits)
    metrics_port: int = 0  # 0: no metrics endpoint
    log_format: str = "text"  # text | json
    optuna_storage: str = ""  # mirror every study live into it (server/optuna_live.py); "": off
    optuna_mirror_interval: float = 1.0  # seconds between the mirror's passes
    # Several replicas on one Redis (server/ownership.py, server/routing.py):
    replica_id: str = ""  # "": <hostname>:<port>, stable across restarts of one replica
    advertise_address: str = ""  # where peers forward calls; "": derived from the bind address
    study_lease_seconds: float = 10.0  # a dead replica's studies move after about this long
    suggestion_buffer: int = 1  # jobs a model-based ask/tell study suggests ahead (0: on demand)

    @classmethod
    def from_env(cls) -> ServerOptions:
        cert, key = env("HPOD_TLS_CERT"), env("HPOD_TLS_KEY")
        tls = TLS(cert, key, env("HPOD_TLS_CLIENT_CA")) if cert and key else None
        return cls(tls=tls, tokens_file=env("HPOD_TOKENS_FILE"), limits=Limits.from_env(),
                   metrics_port=env_int("HPOD_METRICS_PORT", 0),
                   log_format=env("HPOD_LOG_FORMAT", "text"),
                   optuna_storage=env("HPOD_OPTUNA_STORAGE"),
                   optuna_mirror_interval=env_float("HPOD_OPTUNA_MIRROR_INTERVAL", 1.0),
                   replica_id=env("HPOD_REPLICA_ID"),
                   advertise_address=env("HPOD_ADVERTISE_ADDRESS"),
                   study_lease_seconds=env_float("HPOD_STUDY_LEASE_SECONDS", 10.0),
                   suggestion_buffer=env_int("HPOD_SUGGESTION_BUFFER", 1))


def add_arguments(p: Any) -> None:
    """The ``hpod server`` flags for these options; each defaults to its environment variable."""
    d = ServerOptions.from_env()
    p.add_argument("--tls-cert", default=env("HPOD_TLS_CERT"), help="PEM server certificate")
    p.add_argument("--tls-key", default=env("HPOD_TLS_KEY"), help="PEM private key")
    p.add_argument("--tls-client-ca", default=env("HPOD_TLS_CLIENT_CA"),
                   help="PEM CA: require client certificates it signed (mutual TLS)")
    p.add_argument("--tokens-file", default=d.tokens_file,
                   help="hashed tokens, one '<sha256> <tenant> <role>' a line (auth on)")
    p.add_argument("--metrics-port", type=int, default=d.metrics_port,
                   help="serve Prometheus metrics on this port (0: off)")
    p.add_argument("--log-format", choices=("text", "json"), default=d.log_format)
    p.add_argument("--max-message-bytes", type=int, default=d.limits.max_message_bytes)
    p.add_argument("--max-parameters", type=int, default=d.limits.max_parameters,
                   help="search-space parameters per study")
    p.add_argument("--max-trials-per-study", type=int, default=d.limits.max_trials)
    p.add_argument("--max-watches", type=int, default=d.limits.max_watches,
                   help="concurrent WatchStudy streams per tenant")
    p.add_argument("--max-name-length", type=int, default=d.limits.max_name_length,
                   help="characters of any name or id in a request")
    p.add_argument("--max-spec-bytes", type=int, default=d.limits.max_spec_bytes,
                   help="bytes of one serialised study spec")
    p.add_argument("--max-choices", type=int, default=d.limits.max_choices,
                   help="categorical choices of one search space, all parameters together")
    p.add_argument("--optuna-storage", default=d.optuna_storage,
                   help="mirror every study live into this Optuna storage: an RDB URL "
                        "(sqlite:///hpod.db, postgresql://...) or a journal file path")
    p.add_argument("--optuna-mirror-interval", type=float, default=d.optuna_mirror_interval,
                   help="seconds between the Optuna mirror's writes")
    p.add_argument("--replica-id", default=d.replica_id,
                   help="this replica's name among servers sharing the Redis (default "
                        "<hostname>:<port>; keep it across restarts to take studies back at once)")
    p.add_argument("--advertise-address", default=d.advertise_address,
                   help="host:port where other replicas reach this one to forward calls "
                        "(default: the bind address, or <hostname>:<port> when binding all)")
    p.add_argument("--study-lease-seconds", type=float, default=d.study_lease_seconds,
                   help="how long a replica that stopped renewing keeps its studies: about "
                        "the failover time after a crash")
    p.add_argument("--suggestion-buffer", type=int, default=d.suggestion_buffer,
                   help="jobs a model-based ask/tell study suggests ahead, in the background, "
                        "so a client's ask does not wait on a model fit (0: suggest on demand, "
                        "each suggestion seeing every result before it)")


def from_arguments(a: Any) -> ServerOptions:
    if bool(a.tls_cert) != bool(a.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    if a.tls_client_ca and not a.tls_cert:
        raise SystemExit("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    tls = TLS(a.tls_cert, a.tls_key, a.tls_client_ca) if a.tls_cert else None
    limits = Limits(max_message_bytes=a.max_message_bytes, max_parameters=a.max_parameters,
                    max_trials=a.max_trials_per_study, max_watches=a.max_watches,
                    max_name_length=a.max_name_length, max_spec_bytes=a.max_spec_bytes,
                    max_choices=a.max_choices)
    return ServerOptions(tls=tls, tokens_file=a.tokens_file, limits=limits,
                         metrics_port=a.metrics_port, log_format=a.log_format,
                         optuna_storage=a.optuna_storage,
                         optuna_mirror_interval=a.optuna_mirror_interval,
                         replica_id=a.replica_id, advertise_address=a.advertise_address,
                         study_lease_seconds=_positive(a.study_lease_seconds,
                                                       "--study-lease-seconds"),
                         suggestion_buffer=_at_least_zero(a.suggestion_buffer,
                                                          "--suggestion-buffer"))


def _at_least_zero(value: int, flag: str) -> int:
    if value < 0:
        raise SystemExit(f"{flag} must be 0 or more, got {value}")
    return value


def _positive(value: float, flag: str) -> float:
    if not value > 0:
        raise SystemExit(f"{flag} must be a positive number of seconds, got {value}")
    return value
