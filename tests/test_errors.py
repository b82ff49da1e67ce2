"""Bad input gets a status code and a message that says what is wrong; the server keeps serving."""

from __future__ import annotations

import grpc
import pytest
from helpers import ctrl_c_delivered
from hpod.client import Client, HpodError
from hpod.client.local import LocalCluster

BASE = {"resource": {"max_resource": 9, "eta": 3}, "algorithm": {"name": "hyperband"},
        "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with no workers: ask/tell clients are the only trainers."""
    with LocalCluster(workers=0, workdir=str(tmp_path_factory.mktemp("errors"))) as c:
        yield c


def spec(**changes) -> dict:
    out = {**BASE, **changes}
    return out


BAD_SPECS = [
    ("empty search space", spec(search_space={}), "search_space", "empty"),
    ("low > high", spec(search_space={"x": {"type": "float", "low": 2.0, "high": 1.0}}),
     "search_space.x", "greater than high"),
    ("log with low <= 0", spec(search_space={"x": {"type": "float", "low": 0.0, "high": 1.0,
                                                   "log": True}}),
     "search_space.x", "log scale needs low > 0"),
    ("unknown algorithm", spec(algorithm={"name": "hyperbandd"}), "algorithm.name",
     "unknown algorithm"),
    ("eta < 2", spec(resource={"max_resource": 9, "eta": 1}), "resource.eta", ">= 2"),
    ("min resource > max resource", spec(resource={"max_resource": 9, "min_resource": 27}),
     "resource.min_resource", "greater than max resource"),
    ("no max resource", spec(resource={"eta": 3}), "resource.max_resource", "> 0"),
]


@pytest.mark.parametrize("name,bad,field,phrase", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_study_is_invalid_argument_naming_the_field(server, name, bad, field, phrase):
    with Client(server.address) as client:
        for call in (client.create_study, client.plan):
            with pytest.raises(HpodError) as err:
                call(bad)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert field in err.value.message and phrase in err.value.message
        # ... and the server keeps serving.
        assert client.plan(BASE).max_trials == 17


def ask_job(client: Client):
    study = client.create_study({**BASE, "algorithm": {"name": "random"}, "max_trials": 2})
    return study, study.ask()


def test_nan_and_infinite_metrics_are_rejected(server):
    with Client(server.address) as client:
        study, job = ask_job(client)
        for bad in (float("nan"), float("inf"), float("-inf")):
            with pytest.raises(HpodError) as err:
                job.report(1, bad)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "finite" in err.value.message
            with pytest.raises(HpodError) as err:
                job.complete(bad)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert job.report(1, 0.5) is False  # a good report still works afterwards
        assert study.trial(job.trial_id).curve == [(1.0, 0.5)]


def test_duplicated_report_and_reports_for_finished_jobs(server):
    with Client(server.address) as client:
        study, job = ask_job(client)
        job.report(1, 0.5)
        with pytest.raises(HpodError) as err:
            job.report(1, 0.4)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "duplicated report" in err.value.message
        job.complete(0.3, resource=9)
        with pytest.raises(HpodError) as err:
            job.complete(0.3, resource=9)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "already ended" in err.value.message
        with pytest.raises(HpodError) as err:
            job.report(2, 0.3)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        # The accepted result is intact.
        assert study.trial(job.trial_id).value == 0.3


def test_unknown_study_and_job_are_not_found(server):
    with Client(server.address) as client:
        with pytest.raises(HpodError) as err:
            client.study("nope")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        study, job = ask_job(client)
        job.id = "nope-j1"
        with pytest.raises(HpodError) as err:
            job.report(1, 0.5)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert "no job" in err.value.message


def test_report_outside_the_job_segment_is_invalid(server):
    with Client(server.address) as client:
        _study, job = ask_job(client)
        with pytest.raises(HpodError) as err:
            job.report(job.to_resource + 1, 0.5)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "beyond" in err.value.message


def test_raise_max_resource_needs_idhb(server):
    with Client(server.address) as client:
        study = client.create_study(BASE)
        with pytest.raises(HpodError) as err:
            study.raise_max_resource()
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_negative_resource_is_invalid_not_a_duplicate(server):
    with Client(server.address) as client:
        _study, job = ask_job(client)
        for bad in (-1.0, 0.0):
            with pytest.raises(HpodError) as err:
                job.report(bad, 0.5)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "resource" in err.value.message and "> 0" in err.value.message
        assert job.report(1, 0.5) is False


def test_a_trainer_no_worker_has_says_how_to_start_one(server):
    with Client(server.address) as client:
        with pytest.raises(HpodError) as err:
            client.create_study({**BASE, "trainer": "resnet9000"})
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.trainer" in err.value.message
        assert "hpod worker --trainer resnet9000" in err.value.message
        # A built-in trainer needs no worker yet (one may start later); its settings are
        # checked where the server knows them.
        client.create_study({**BASE, "trainer": "analytic",
                             "trainer_settings": {"step_seconds": 0.1}}).stop()
        with pytest.raises(HpodError) as err:
            client.create_study({**BASE, "trainer": "analytic",
                                 "trainer_settings": {"step_seconds": 1e9}})
        assert "spec.trainer_settings.step_seconds" in err.value.message


def test_ctrl_c_ends_a_wait_not_the_study_and_the_client_goes_on(server) -> None:
    """A KeyboardInterrupt raised inside gRPC's own code (as it starts or ends a call) can
    leave the channel unable to close, and the process hung at exit; so ``wait`` follows the
    study on another thread, and a Ctrl-C cancels that thread's stream from the main one."""
    import os
    import signal
    import threading

    from hpod.v1 import hpod_pb2 as pb

    with Client(server.address) as client:
        study = client.create_study(spec())  # ask/tell, nobody asks: it stays active
        watching, followed_on = threading.Event(), []
        watch = study.watch

        def recorded(*args, **kw):
            followed_on.append(threading.current_thread())
            watching.set()
            yield from watch(*args, **kw)
        study.watch = recorded

        def ctrl_c() -> None:
            watching.wait(60)
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=ctrl_c, daemon=True).start()
        with ctrl_c_delivered(), pytest.raises(KeyboardInterrupt):
            study.wait()
        assert followed_on and threading.main_thread() not in followed_on
        assert study._streams.halted and not study._streams.open  # its stream was ended
        assert study.refresh().state == pb.STUDY_STATE_ACTIVE
        with pytest.raises(TimeoutError):  # a new wait is not the interrupted one
            study.wait(timeout=1.0)
    # Leaving the block closes the channel: it returns (a half-made call would hang it).


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wait_ready_names_the_address_when_no_server_answers() -> None:
    address = f"127.0.0.1:{_free_port()}"
    with Client(address) as client, pytest.raises(HpodError) as e:
        client.wait_ready(1.0)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert address in e.value.message and "hpod local" in e.value.message


def test_wait_ready_finds_a_server_that_starts_while_it_waits_even_one_not_serving() -> None:
    """A health answer of any kind is a server answering (NOT_SERVING: it cannot reach Redis
    yet); a channel made before the server listened connects once it does."""
    import threading
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    port = _free_port()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    later = threading.Timer(1.0, server.start)
    with Client(f"127.0.0.1:{port}") as client:
        later.start()
        try:
            client.wait_ready(60)
        finally:
            later.join()
            server.stop(None)


class _Flaky:
    """A stub whose calls fail with ``codes`` in turn, then answer (a unit test of the SDK's
    retry rule alone)."""

    def __init__(self, codes: list[grpc.StatusCode]) -> None:
        self.codes, self.calls = list(codes), 0

    def __getattr__(self, method: str):
        def call(request, timeout=None):
            self.calls += 1
            if self.codes:
                code = self.codes.pop(0)
                raise type("Failed", (grpc.RpcError,), {
                    "code": lambda self: code, "details": lambda self: code.name})()
            return method
        return call


def test_reads_ride_out_a_stopping_server_and_writes_are_not_repeated() -> None:
    with Client(f"127.0.0.1:{_free_port()}", timeout=30) as client:
        client.stub = _Flaky([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
        assert client._call("GetStudy", None) == "GetStudy"
        assert client.stub.calls == 3
        client.stub = _Flaky([grpc.StatusCode.CANCELLED])
        with pytest.raises(HpodError) as e:
            client._call("CompleteJob", None)
        assert e.value.code == grpc.StatusCode.CANCELLED and client.stub.calls == 1
        client.stub = _Flaky([grpc.StatusCode.NOT_FOUND])
        with pytest.raises(HpodError):
            client._call("GetStudy", None)
        assert client.stub.calls == 1
