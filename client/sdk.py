"""The Python SDK: ``from hpod.client import Client``.

    client = Client("127.0.0.1:50051")
    study = client.create_study({...})           # or client.create_study_from_file("s.yaml")
    study.wait(progress=True)
    print(study.best_trial())

Ask/tell, for users who keep their own training loop::

    while (job := study.ask()) is not None:
        for epoch in range(int(job.from_resource) + 1, int(job.to_resource) + 1):
            if job.report(epoch, train_one_epoch()):  # True: the algorithm says stop
                break
        job.complete(value)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format
from hpod.v1 import hpod_pb2 as pb
from hpod.v1 import hpod_pb2_grpc as pb_grpc

from .spec import build_spec, int_params, load_spec_file

TRIAL_STATE = {v: k.removeprefix("TRIAL_STATE_").lower()
               for k, v in pb.TrialState.items()}
STUDY_STATE = {v: k.removeprefix("STUDY_STATE_").lower() for k, v in pb.StudyState.items()}
EVENT_KIND = {v: k.lower() for k, v in pb.TrialEvent.Kind.items()}
# gRPC health checking (grpc.health.v1), which every hpod server serves; an empty request
# asks about the server as a whole.
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# What a read retries: a server restarting or a study moving (UNAVAILABLE), and a call that
# reached a server in the moment it began to stop: gRPC cancels a call its transport took
# but the stopping server never picked up (CANCELLED, the call not run); this client cancels
# only the watch streams of a wait its caller interrupted, which it does not retry.
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
READS = {"GetStudy", "ListStudies", "ListTrials", "GetTrial", "GetBestTrial", "PlanStudy",
         "GetParetoFront"}


class HpodError(RuntimeError):
    """A call failed; ``code`` is the gRPC status code, the message says what to fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass
class Trial:
    id: int
    config: dict[str, Any]
    state: str
    value: float | None
    resource: float
    bracket: int
    rung: int
    cost: float
    curve: list[tuple[float, float]] = field(default_factory=list)
    lost_jobs: int = 0
    error: str = ""
    samples_per_second: float = 0.0  # training throughput of its latest job (0: not reported)
    warm_resumes: int = 0  # segments continued from a worker's memory, not the checkpoint
    segments: int = 0  # jobs it completed: 1 + the continuations it had
    checkpoint_bytes: int = 0  # its newest checkpoint on disk (0 once pruned)


@dataclass
class ParetoPoint:
    """A point of the cost/value front; ``cost`` and ``value`` are means over ``trial_ids``
    (the configuration and its resamples), ``value`` as the trainer reports it."""

    trial_id: int
    cost: float
    value: float
    config: dict[str, Any]
    trial_ids: list[int] = field(default_factory=list)


@dataclass
class ScalingFit:
    """T(param) = exponent * log10(cost) + intercept over the front; for a log parameter,
    param = coefficient * cost ** exponent."""

    parameter: str
    exponent: float
    intercept: float
    coefficient: float
    transform: str


@dataclass
class Event:
    kind: str
    trial_id: int | None
    resource: float
    value: float | None
    trial: Trial | None
    study_state: str
    time: float = 0.0  # server clock, seconds since the epoch


def _config(msg: Any, int_params: set[str]) -> dict[str, Any]:
    d = json_format.MessageToDict(msg)
    # JSON has only doubles: give integer parameters back their type.
    return {k: int(v) if k in int_params and isinstance(v, float) else v for k, v in d.items()}


def trial_from_pb(t: pb.Trial, int_params: set[str]) -> Trial:
    return Trial(id=t.id, config=_config(t.config, int_params), state=TRIAL_STATE[t.state],
                 value=t.value if t.has_value else None, resource=t.resource,
                 bracket=t.bracket, rung=t.rung, cost=t.cost,
                 curve=[(p.resource, p.value) for p in t.curve], lost_jobs=t.lost_jobs,
                 error=t.error, samples_per_second=t.samples_per_second,
                 warm_resumes=t.warm_resumes, segments=t.segments,
                 checkpoint_bytes=t.checkpoint_bytes)


class Client:
    """``token`` (default ``$HPOD_TOKEN``) is sent as ``authorization: Bearer``; ``tls_ca``
    (default ``$HPOD_TLS_CA``) turns on TLS, trusting that PEM CA (``tls=True`` alone trusts
    the system roots); ``tls_cert``/``tls_key`` present a client certificate (mutual TLS)."""

    def __init__(self, address: str = "127.0.0.1:50051", timeout: float = 30.0, *,
                 token: str | None = None, tls: bool | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 server_name: str | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = _channel(address, token, tls, tls_ca, tls_cert, tls_key, server_name)
        self.stub = pb_grpc.HpodStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once a server answers a call on this channel (a health check; any answer
        counts, NOT_SERVING or a refused token included: the next call says what is wrong).

        A call, not ``grpc.channel_ready_future``: channels to one address share their
        connection, so a new channel can find it READY on a server that has just died; the
        future then sees it drop to IDLE and, having asked to connect only once, waits there
        for good. Every call below asks to connect again and waits for a live server."""
        check = self.channel.unary_unary(HEALTH_CHECK)  # bytes in and out: no health stubs
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                check(b"", timeout=min(left, 5.0), wait_for_ready=True)
                return
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    return
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        raise HpodError(grpc.StatusCode.UNAVAILABLE,
                        f"no hpod server answered at {self.address} within {timeout:g}s; "
                        "start one with `hpod server` or `hpod local`")

    def _call(self, method: str, request: Any) -> Any:
        # Reads are retried while the server is briefly unavailable (restarting, or reloading a
        # study after a storage error); writes are not, so a report is never sent twice.
        deadline = time.time() + (self.timeout if method in READS else 0)
        while True:
            try:
                return getattr(self.stub, method)(request, timeout=self.timeout)
            except grpc.RpcError as e:
                if e.code() not in RETRIED or time.time() > deadline:
                    raise HpodError(e.code(), e.details() or "") from None
                time.sleep(0.2)

    # ---------------------------------------------------------------- studies

    def create_study(self, spec: Mapping[str, Any] | pb.StudySpec) -> Study:
        msg = spec if isinstance(spec, pb.StudySpec) else build_spec(spec)
        study = self._call("CreateStudy", pb.CreateStudyRequest(spec=msg))
        return Study(self, study.id, study)

    def create_study_from_file(self, path: str) -> Study:
        return self.create_study(load_spec_file(path))

    def plan(self, spec: Mapping[str, Any] | pb.StudySpec) -> pb.Plan:
        msg = spec if isinstance(spec, pb.StudySpec) else build_spec(spec)
        return self._call("PlanStudy", pb.PlanStudyRequest(spec=msg))

    def study(self, study_id: str) -> Study:
        return Study(self, study_id, self._call("GetStudy", pb.GetStudyRequest(
            study_id=study_id)))

    def list_studies(self, page_size: int = 0) -> list[pb.Study]:
        """Every study this caller may see, oldest first (all pages)."""
        return list(self.iter_studies(page_size))

    def iter_studies(self, page_size: int = 0) -> Iterator[pb.Study]:
        """Studies oldest first, fetched one page (``page_size``; 0: the server's default) at
        a time as the iteration goes on."""
        token = ""
        while True:
            resp = self._call("ListStudies", pb.ListStudiesRequest(page_size=page_size,
                                                                    page_token=token))
            yield from resp.studies
            token = resp.next_page_token
            if not token:
                return


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def _channel(address: str, token: str | None, tls: bool | None, tls_ca: str | None,
             tls_cert: str | None, tls_key: str | None, server_name: str | None
             ) -> grpc.Channel:
    token = os.environ.get("HPOD_TOKEN") if token is None else token
    tls_ca = os.environ.get("HPOD_TLS_CA") if tls_ca is None else tls_ca
    if tls is None:
        tls = bool(tls_ca or tls_cert)
    if not tls:
        if token:
            # gRPC sends call credentials only over a secure channel; a plaintext channel with
            # a token is for a loopback or mesh-encrypted hop, so attach the header directly.
            from .safety import plaintext_token_warning

            warning = plaintext_token_warning(address, token, False)
            if warning:
                import warnings

                warnings.warn(warning, stacklevel=4)
            return grpc.intercept_channel(grpc.insecure_channel(address), _Bearer(token))
        return grpc.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(_read(tls_ca), _read(tls_key), _read(tls_cert))
    if token:
        creds = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(token))
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, creds, options=options)


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _add(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._add(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._add(details), request)


class _Streams:
    """The watch streams a study has open, so that a Ctrl-C on the main thread can end them
    from there (``Study.wait``); once halted, a stream opened late is ended at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: set[Any] = set()
        self.halted = False

    def add(self, stream: Any) -> None:
        with self.lock:
            self.open.add(stream)
            halted = self.halted
        if halted:
            stream.cancel()

    def discard(self, stream: Any) -> None:
        with self.lock:
            self.open.discard(stream)

    def halt(self) -> None:
        with self.lock:
            self.halted = True
            streams = list(self.open)
        for stream in streams:
            stream.cancel()


class Study:
    """A handle on one study; ``info`` is the last fetched ``hpod.v1.Study`` message."""

    def __init__(self, client: Client, study_id: str, info: pb.Study) -> None:
        self.client = client
        self.id = study_id
        self.info = info
        self._int_params = int_params(info.spec)
        self._streams = _Streams()

    def refresh(self) -> pb.Study:
        self.info = self.client._call("GetStudy", pb.GetStudyRequest(study_id=self.id))
        return self.info

    @property
    def state(self) -> str:
        return STUDY_STATE[self.info.state]

    def stop(self) -> None:
        self.info = self.client._call("StopStudy", pb.StopStudyRequest(study_id=self.id))

    def delete(self) -> None:
        self.client._call("DeleteStudy", pb.DeleteStudyRequest(study_id=self.id))

    def raise_max_resource(self) -> None:
        self.info = self.client._call("RaiseMaxResource",
                                      pb.RaiseMaxResourceRequest(study_id=self.id))

    def trials(self, curves: bool = True, page_size: int = 0) -> list[Trial]:
        """Every trial of the study, by id (all pages)."""
        return list(self.iter_trials(curves, page_size))

    def iter_trials(self, curves: bool = True, page_size: int = 0) -> Iterator[Trial]:
        """Trials by id, one page (``page_size``; 0: the server's default) at a time."""
        token = ""
        while True:
            resp = self.client._call("ListTrials", pb.ListTrialsRequest(
                study_id=self.id, include_curves=curves, page_size=page_size,
                page_token=token))
            yield from (trial_from_pb(t, self._int_params) for t in resp.trials)
            token = resp.next_page_token
            if not token:
                return

    def trial(self, trial_id: int) -> Trial:
        return trial_from_pb(self.client._call("GetTrial", pb.GetTrialRequest(
            study_id=self.id, trial_id=trial_id)), self._int_params)

    def best_trial(self) -> Trial | None:
        try:
            t = self.client._call("GetBestTrial", pb.GetBestTrialRequest(study_id=self.id))
        except HpodError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return trial_from_pb(t, self._int_params)

    def watch(self, include_progress: bool = False, timeout: float | None = None
              ) -> Iterator[Event]:
        """Trial events as they happen, until the study ends (or ``timeout`` seconds pass:
        HpodError DEADLINE_EXCEEDED). A server that restarts or hands the study to another
        replica ends the stream with UNAVAILABLE: watch again."""
        stream = self.client.stub.WatchStudy(pb.WatchStudyRequest(
            study_id=self.id, include_progress=include_progress), timeout=timeout)
        streams = self._streams
        streams.add(stream)
        try:
            for ev in stream:
                trial = trial_from_pb(ev.trial, self._int_params) if ev.HasField("trial") \
                    else None
                yield Event(EVENT_KIND[ev.kind], ev.trial_id if trial else None, ev.resource,
                            ev.value if trial else None, trial, STUDY_STATE[ev.study_state],
                            ev.time.ToNanoseconds() / 1e9)
        except grpc.RpcError as e:
            raise HpodError(e.code(), e.details() or "") from None
        finally:
            streams.discard(stream)
            stream.cancel()  # a caller that stops reading early ends the server's stream too

    def wait(self, progress: bool = False, timeout: float | None = None) -> pb.Study:
        """Block until the study ends; with ``progress`` show a live progress bar. Ctrl-C
        (KeyboardInterrupt) stops the waiting, never the study.

        On the main thread the waiting runs on a thread of its own and the main thread only
        joins it: a KeyboardInterrupt raised inside gRPC's own code, as it starts or ends a
        call, can leave the channel unable to close (the process then hangs at exit). A
        Ctrl-C instead cancels the watch streams from the main thread and is raised there."""
        self._streams = _Streams()
        if threading.current_thread() is not threading.main_thread():
            return self._wait(progress, timeout)
        outcome: dict[str, Any] = {}
        # An event, not Thread.join: a join that a KeyboardInterrupt interrupts can mark the
        # thread as ended while it still runs (CPython 3.11), and a second join then returns
        # at once.
        done = threading.Event()

        def run() -> None:
            try:
                outcome["info"] = self._wait(progress, timeout)
            except BaseException as e:  # handed to the caller's thread
                outcome["error"] = e
            finally:
                done.set()

        threading.Thread(target=run, name=f"hpod-wait-{self.id}", daemon=True).start()
        try:
            # In slices: the OS may deliver SIGINT to another thread, and then only a wait that
            # returns lets the main thread run Python's handler.
            while not done.wait(0.2):
                pass
        except KeyboardInterrupt:
            self._streams.halt()
            # A read under way ends by its own deadline: it is waited for 5 s at most.
            done.wait(5.0)
            raise
        if "error" in outcome:
            raise outcome["error"]
        return outcome["info"]

    def _wait(self, progress: bool, timeout: float | None) -> pb.Study:
        if progress:
            from .progress import watch_with_progress

            watch_with_progress(self)
        deadline = None if timeout is None else time.time() + timeout
        while not self._streams.halted and self.refresh().state == pb.STUDY_STATE_ACTIVE:
            left = None if deadline is None else deadline - time.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"study {self.id} still active after {timeout}s")
            if progress:
                time.sleep(0.2)
                continue
            try:
                for ev in self.watch(timeout=left):
                    if ev.kind == "study_ended":
                        break
            except HpodError as e:
                if self._streams.halted:  # the caller pressed Ctrl-C
                    break
                # The server restarted or the study moved to another replica (UNAVAILABLE;
                # CANCELLED as a server stops), or the deadline passed: look at the study
                # again.
                if e.code not in (*RETRIED, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                time.sleep(0.2)
        return self.info

    def _pareto(self) -> pb.ParetoFront:
        return self.client._call("GetParetoFront", pb.GetParetoFrontRequest(study_id=self.id))

    def pareto_front(self) -> list[ParetoPoint]:
        """The cost/value Pareto front, cheapest first (``carbs`` and ``asha-carbs`` studies;
        FAILED_PRECONDITION for others). An ``asha-carbs`` point's config also holds the
        resource it was trained to. A point another dominates (more cost for no better value,
        ties included) is left out."""
        from .pareto import non_dominated

        points = [ParetoPoint(p.trial_id, p.cost, p.value, _config(p.config, self._int_params),
                              list(p.trial_ids)) for p in self._pareto().points]
        return non_dominated(points, self.info.spec.objective.direction == pb.DIRECTION_MAXIMIZE)

    def scaling_fit(self) -> dict[str, ScalingFit]:
        """Each parameter against cost over the front (empty until two distinct costs)."""
        return {f.parameter: ScalingFit(f.parameter, f.exponent, f.intercept, f.coefficient,
                                        f.transform) for f in self._pareto().fits}

    def export_optuna(self, storage: Any, follow: bool = False) -> Any:
        """Mirror into an Optuna storage (URL or journal path), live with ``follow``; see
        ``hpod.client.optuna_export``."""
        from .optuna_export import export_study

        return export_study(self, storage, follow)

    def plot(self, out_dir: str, storage: Any = None) -> list[Any]:
        """PNG plots into ``out_dir`` (``storage``: a live Optuna mirror, for wall time); see
        ``hpod.client.plots``."""
        from .plots import plot_study

        return plot_study(self, out_dir, storage)

    # ---------------------------------------------------------------- ask/tell

    def ask(self, client_id: str = "", wait: bool = True, poll: float = 0.5) -> AskedJob | None:
        """The next job, or None when the study is done. With ``wait``, polls while the
        algorithm has nothing to hand out yet (e.g. a synchronous rung is still running)."""
        while True:
            resp = self.client._call("AskJob", pb.AskJobRequest(study_id=self.id,
                                                                client_id=client_id))
            if resp.has_job:
                return AskedJob(self, resp.job)
            if resp.study_done or not wait:
                return None
            time.sleep(resp.retry_after_seconds or poll)


class AskedJob:
    def __init__(self, study: Study, job: pb.Job) -> None:
        self.study = study
        self.job = job
        self.id = job.job_id
        self.trial_id = job.trial_id
        self.config = _config(job.config, study._int_params)
        self.from_resource = job.from_resource
        self.to_resource = job.to_resource
        self.max_resource = job.max_resource
        self.seed = job.seed

    def report(self, resource: float, value: float) -> bool:
        """Report a learning-curve point; True when the algorithm says stop."""
        resp = self.study.client._call("ReportProgress", pb.ReportProgressRequest(
            study_id=self.study.id, job_id=self.id, resource=resource, value=value))
        return resp.decision == pb.DECISION_STOP

    def complete(self, value: float, resource: float = 0.0, cost: float = 0.0) -> None:
        self.study.client._call("CompleteJob", pb.CompleteJobRequest(
            study_id=self.study.id, job_id=self.id, value=value, resource=resource, cost=cost))

    def fail(self, reason: str) -> None:
        self.study.client._call("FailJob", pb.FailJobRequest(
            study_id=self.study.id, job_id=self.id, reason=reason))
