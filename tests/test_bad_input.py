"""A corpus of bad requests against a real server on a real Redis: every one gets the status
code a client can act on (never UNKNOWN, never INTERNAL), names what is wrong, and none of
them slows a bystander study down; health checking follows Redis.

Run alone for the figures: ``python -m pytest -q -s tests/test_bad_input.py -k corpus``
prints ``bad-input corpus: tried N, clear N, unclear N`` and the sentinel's p99.
"""

from __future__ import annotations

import math
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import wait_for
from hpod.client import HpodError
from hpod.client.local import LocalCluster
from hpod.server.store import keys
from hpod.v1 import hpod_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OK = grpc.StatusCode.OK
NAN, INF = float("nan"), float("inf")
HPOD = pb.DESCRIPTOR.services_by_name["Hpod"]
MB = 1 << 20
SAMPLES = 200  # sentinel calls while the corpus runs


@dataclass
class Case:
    name: str
    method: str  # full gRPC method path
    request: bytes
    expect: grpc.StatusCode
    field: str = ""  # must appear in the status message


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with no workers (nothing trains; the corpus is about answers)."""
    with LocalCluster(workers=0, workdir=str(tmp_path_factory.mktemp("bad-input"))) as c:
        yield c


def base_spec(**changes) -> pb.StudySpec:
    spec = pb.StudySpec(name="bad-input", max_trials=4, seed=1,
                        resource=pb.ResourceSpec(max_resource=9, eta=3),
                        algorithm=pb.AlgorithmSpec(name="random"),
                        search_space=[pb.Parameter(name="x",
                                                   float_range=pb.FloatRange(low=0, high=1))])
    for key, value in changes.items():
        if key == "search_space":
            del spec.search_space[:]
            spec.search_space.extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(spec, key).CopyFrom(value)
        else:
            setattr(spec, key, value)
    return spec


def hpod(method: str) -> str:
    return f"/hpod.v1.Hpod/{method}"


def call(channel: grpc.Channel, case: Case, timeout: float = 30) -> tuple[grpc.StatusCode, str]:
    streaming = HPOD.methods_by_name[case.method.rsplit("/", 1)[1]].server_streaming \
        if case.method.startswith("/hpod.") else False
    ident = (lambda b: b)  # noqa: E731 (requests are sent as prepared bytes)
    try:
        if streaming:
            stream = channel.unary_stream(case.method, request_serializer=ident,
                                          response_deserializer=ident)(case.request,
                                                                       timeout=timeout)
            next(iter(stream))
            stream.cancel()
        else:
            channel.unary_unary(case.method, request_serializer=ident,
                                response_deserializer=ident)(case.request, timeout=timeout)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return OK, ""


# ---------------------------------------------------------------- the corpus

GARBAGE = {
    "length past the end": b"\x0a\x10abc",
    "varint of eleven bytes": b"\x08" + b"\xff" * 11,
    "wire type 7": b"\x0f",
    "field number 0": b"\x00\x01",
    "unmatched end-group": b"\x0c",
    "start-group": b"\x0b",
    "lone continuation byte": b"\xff",
}


def malformed_cases() -> list[Case]:
    out = []
    for m in HPOD.methods:
        for what, raw in GARBAGE.items():
            out.append(Case(f"{m.name}: {what}", hpod(m.name), raw, INVALID))
        first = m.input_type.fields_by_number.get(1)
        if first is not None and first.type == first.TYPE_STRING:
            out.append(Case(f"{m.name}: invalid UTF-8 in {first.name}", hpod(m.name),
                            b"\x0a\x02\xc3\x28", INVALID, first.name))
    for m in ("CreateStudy", "PlanStudy"):
        # spec { search_space { name: <5 bytes announced, 2 sent> } }
        out.append(Case(f"{m}: truncated parameter name", hpod(m),
                        b"\x0a\x06\x12\x04\x0a\x05ab", INVALID, "spec.search_space.name"))
        out.append(Case(f"{m}: settings nested 100 deep", hpod(m), _deep_settings(100), INVALID))
    out.append(Case("Health.Check: garbage", "/grpc.health.v1.Health/Check", b"\x0f", INVALID))
    return out


def _len(field: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (tag, length, payload)."""
    def varint(n: int) -> bytes:
        out = b""
        while n > 0x7F:
            out += bytes([n & 0x7F | 0x80])
            n >>= 7
        return out + bytes([n])

    return varint(field << 3 | 2) + varint(len(payload)) + payload


def _deep_settings(depth: int) -> bytes:
    """A CreateStudy/PlanStudy request whose algorithm.settings nest ``depth`` Structs deep,
    written by hand: protobuf's own encoder refuses to build it."""
    value = b"\x11" + struct.pack("<d", 1.0)  # Value.number_value
    for _ in range(depth):
        value = _len(5, _len(1, _len(1, b"a") + _len(2, value)))  # Value{struct{a: value}}
    settings = _len(1, _len(1, b"deep") + _len(2, value))
    spec = base_spec().SerializeToString() + _len(5, _len(2, settings))  # merged into algorithm
    return _len(1, spec)


def spec_cases() -> list[Case]:
    """Study specs, each sent to CreateStudy and PlanStudy."""
    bad: list[tuple[str, pb.StudySpec, grpc.StatusCode, str]] = []
    for x in (NAN, INF, -INF):
        tag = repr(x)
        for path, settings in (("algorithm.settings.lr", {"lr": x}),
                               ("algorithm.settings.inner.lr", {"inner": {"lr": x}}),
                               ("algorithm.settings.grid[1]", {"grid": [1.0, x]})):
            s = base_spec()
            s.algorithm.settings.update(settings)
            bad.append((f"{tag} in {path}", s, INVALID, path))
        for path, settings in (("trainer_settings.step_seconds", {"step_seconds": x}),
                               ("trainer_settings.a.b", {"a": {"b": [x]}})):
            s = base_spec()
            s.trainer_settings.update(settings)
            bad.append((f"{tag} in {path}", s, INVALID, "trainer_settings"))
        s = base_spec()
        choice = s.search_space.add(name="c")
        choice.categorical.choices.add().number_value = 1
        choice.categorical.choices.add().number_value = x
        bad.append((f"{tag} as a categorical choice", s, INVALID, "search_space.c"))
        for end in ("low", "high"):
            s = base_spec()
            setattr(s.search_space[0].float_range, end, x)
            bad.append((f"{tag} as float_range.{end}", s, INVALID, "search_space.x"))
        for field in ("max_resource", "min_resource"):
            s = base_spec()
            setattr(s.resource, field, x)
            bad.append((f"{tag} as resource.{field}", s, INVALID, f"resource.{field}"))
    for lo, hi, eta in ((5e-324, 1.7e308, 3), (1e-300, 1e300, 3), (1.0, 2.0**45, 2),
                        (1.0, 1e16, 10), (1.0, -1.0, 3), (-1.0, 9.0, 3), (1.0, 9.0, 1)):
        s = base_spec(resource=pb.ResourceSpec(min_resource=lo, max_resource=hi, eta=eta))
        bad.append((f"resources min {lo:g} max {hi:g} eta {eta}", s, INVALID, "resource."))
    s = base_spec()
    s.search_space[0].float_range.low, s.search_space[0].float_range.high = -1.7e308, 1.7e308
    bad.append(("float range wider than a double", s, INVALID, "search_space.x"))
    s = base_spec(search_space=[pb.Parameter(name="n", int_range=pb.IntRange(low=0,
                                                                           high=2**60))])
    bad.append(("int range past 2**53", s, INVALID, "search_space.n"))
    many = [pb.Parameter(name=f"p{i}", float_range=pb.FloatRange(high=1)) for i in range(50_000)]
    bad.append(("50,000 parameters", base_spec(search_space=many), EXHAUSTED, "request"))
    bad.append(("257 parameters", base_spec(search_space=many[:257]), INVALID, "at most 256"))
    same = [pb.Parameter(name="p", float_range=pb.FloatRange(high=1))] * 200
    bad.append(("200 parameters of one name", base_spec(search_space=same), INVALID, "unique"))
    s = base_spec()
    c = s.search_space.add(name="c")
    for i in range(10_001):
        c.categorical.choices.add().number_value = i
    bad.append(("10,001 categorical choices", s, EXHAUSTED, "choices"))
    bad.append(("a 10 MB study name", base_spec(name="n" * (10 * MB)), EXHAUSTED, "request"))
    s = base_spec()
    s.algorithm.settings.update({"grid": list(range(26_000))})
    bad.append(("a 290 kB settings list", s, EXHAUSTED, "spec"))
    bad.append(("a 300-character study name", base_spec(name="n" * 300), EXHAUSTED,
                "spec.name"))
    for field in ("trainer", ):
        bad.append((f"a 100 kB {field}", base_spec(**{field: "t" * 100_000}), EXHAUSTED,
                    f"spec.{field}"))
    s = base_spec()
    s.objective.metric = "m" * 100_000
    bad.append(("a 100 kB metric name", s, EXHAUSTED, "spec.objective.metric"))
    s = base_spec()
    s.search_space[0].name = "p" * 100_000
    bad.append(("a 100 kB parameter name", s, EXHAUSTED, "name"))
    for where in ("algorithm.settings", "trainer_settings"):
        s = base_spec()
        (s.algorithm.settings if where == "algorithm.settings" else s.trainer_settings
         ).update({"k" * 100_000: 1})
        bad.append((f"a 100 kB key in {where}", s, EXHAUSTED, f"spec.{where}.kkk"))
    s = base_spec()
    s.algorithm.settings.update({"k" * 200: 1})
    bad.append(("an unknown 200-character setting", s, INVALID, "algorithm.settings.kkk"))
    s = base_spec()
    s.objective.direction = 7
    bad.append(("objective.direction 7", s, INVALID, "spec.objective.direction"))
    s = base_spec()
    s.search_space[0].float_range.scale = 9
    bad.append(("scale 9", s, INVALID, "search_space.x.scale"))
    bad.append(("max_retries 1e9", base_spec(max_retries=10**9), INVALID, "spec.max_retries"))
    s = base_spec(trainer="analytic")
    s.trainer_settings.update({"step_seconds": 1e9})
    bad.append(("step_seconds 1e9", s, INVALID, "spec.trainer_settings.step_seconds"))
    out = []
    for name, s, code, field in bad:
        for method in ("CreateStudy", "PlanStudy"):
            req = (pb.CreateStudyRequest(spec=s) if method == "CreateStudy"
                   else pb.PlanStudyRequest(spec=s))
            out.append(Case(f"{method}: {name}", hpod(method), req.SerializeToString(), code,
                            field))
    for name, s, field in (("a million trials", base_spec(max_trials=1_000_000), "at most"),
                           ("unknown trainer", base_spec(trainer="nosuch"),
                            "hpod worker --trainer nosuch"),
                           ("misspelled setting of a declared trainer",
                            _custom(depht=3), "spec.trainer_settings.depht")):
        out.append(Case(f"CreateStudy: {name}", hpod("CreateStudy"),
                        pb.CreateStudyRequest(spec=s).SerializeToString(), INVALID, field))
    return out


def _custom(**settings) -> pb.StudySpec:
    s = base_spec(trainer="custom")
    s.trainer_settings.update(settings)
    return s


def id_cases(sid: str, job_id: str) -> list[Case]:
    huge = "s" * 100_000
    out = []
    for m in HPOD.methods:
        fields = {f.name for f in m.input_type.fields}
        if "study_id" in fields:
            msg = getattr(pb, m.input_type.name)(study_id=huge)
            if "job_id" in fields:
                msg.job_id = "j"
            out.append(Case(f"{m.name}: a 100 kB study_id", hpod(m.name),
                            msg.SerializeToString(), EXHAUSTED, "study_id"))
    for method, cls in (("ReportProgress", pb.ReportProgressRequest),
                        ("CompleteJob", pb.CompleteJobRequest), ("FailJob", pb.FailJobRequest)):
        msg = cls(study_id=sid, job_id="j" * 100_000)
        out.append(Case(f"{method}: a 100 kB job_id", hpod(method), msg.SerializeToString(),
                        EXHAUSTED, "job_id"))
    out += [
        Case("AskJob: a 100 kB client_id", hpod("AskJob"),
             pb.AskJobRequest(study_id=sid, client_id="c" * 100_000).SerializeToString(),
             EXHAUSTED, "client_id"),
        Case("FailJob: a 100 kB reason", hpod("FailJob"),
             pb.FailJobRequest(study_id=sid, job_id=job_id, reason="r" * 100_000
                               ).SerializeToString(), EXHAUSTED, "reason"),
        Case("FailJob: a 1 MB reason", hpod("FailJob"),
             pb.FailJobRequest(study_id=sid, job_id=job_id, reason="r" * MB
                               ).SerializeToString(), EXHAUSTED, "request"),
        Case("GetStudy: a 1 MB study_id", hpod("GetStudy"),
             pb.GetStudyRequest(study_id="s" * MB).SerializeToString(), EXHAUSTED, "request"),
        Case("GetStudy: unknown study", hpod("GetStudy"),
             pb.GetStudyRequest(study_id="s0000000000").SerializeToString(), NOT_FOUND),
    ]
    return out


def job_cases(sid: str, job_id: str) -> list[Case]:
    def report(resource: float, value: float) -> bytes:
        return pb.ReportProgressRequest(study_id=sid, job_id=job_id, resource=resource,
                                        value=value).SerializeToString()

    def complete(value: float = 0.5, resource: float = 0.0, cost: float = 0.0) -> bytes:
        return pb.CompleteJobRequest(study_id=sid, job_id=job_id, value=value,
                                     resource=resource, cost=cost).SerializeToString()

    out = [Case("ReportProgress: resource -1", hpod("ReportProgress"), report(-1, 0.5),
                INVALID, "resource"),
           Case("ReportProgress: resource 0", hpod("ReportProgress"), report(0, 0.5),
                INVALID, "resource")]
    for x in (NAN, INF, -INF):
        out += [Case(f"ReportProgress: resource {x}", hpod("ReportProgress"), report(x, 0.5),
                     INVALID, "resource"),
                Case(f"ReportProgress: value {x}", hpod("ReportProgress"), report(1, x),
                     INVALID, "finite"),
                Case(f"CompleteJob: value {x}", hpod("CompleteJob"), complete(value=x),
                     INVALID, "value"),
                Case(f"CompleteJob: resource {x}", hpod("CompleteJob"), complete(resource=x),
                     INVALID, "resource"),
                Case(f"CompleteJob: cost {x}", hpod("CompleteJob"), complete(cost=x),
                     INVALID, "cost")]
    out += [Case("CompleteJob: resource -1", hpod("CompleteJob"), complete(resource=-1),
                 INVALID, "resource"),
            Case("CompleteJob: cost -1", hpod("CompleteJob"), complete(cost=-1),
                 INVALID, "cost")]
    return out


def page_cases(sid: str, other_sid: str, trials_token: str, studies_token: str) -> list[Case]:
    def studies(token: str = "", size: int = 0) -> bytes:
        return pb.ListStudiesRequest(page_token=token, page_size=size).SerializeToString()

    def trials(token: str = "", size: int = 0, study: str = sid) -> bytes:
        return pb.ListTrialsRequest(study_id=study, page_token=token,
                                    page_size=size).SerializeToString()

    return [
        Case("ListStudies: garbage token", hpod("ListStudies"), studies("garbage!"),
             INVALID, "page_token"),
        Case("ListStudies: a 10 kB token", hpod("ListStudies"), studies("A" * 10_000),
             INVALID, "page_token"),
        Case("ListStudies: a trials token", hpod("ListStudies"), studies(trials_token),
             INVALID, "page_token"),
        Case("ListStudies: page_size -1", hpod("ListStudies"), studies(size=-1),
             INVALID, "page_size"),
        Case("ListTrials: garbage token", hpod("ListTrials"), trials("e30"),
             INVALID, "page_token"),
        Case("ListTrials: a studies token", hpod("ListTrials"), trials(studies_token),
             INVALID, "page_token"),
        Case("ListTrials: another study's token", hpod("ListTrials"),
             trials(trials_token, study=other_sid), INVALID, "page_token"),
        Case("ListTrials: page_size -5", hpod("ListTrials"), trials(size=-5),
             INVALID, "page_size"),
    ]


# ---------------------------------------------------------------- the test


def _declare_custom_trainer(server: LocalCluster) -> None:
    """What a worker with trainer ``custom`` publishes when it registers (its hash and its
    heartbeat); busy, so no job is ever handed to it."""
    r = redis.Redis.from_url(server.redis_url, decode_responses=True)
    r.hset(keys.worker("bad-input-worker"), mapping={
        "trainers": "custom", "status": "busy",
        "trainer_specs": '{"custom": {"settings": ["depth", "width"]}}'})
    r.zadd(keys.workers(), {"bad-input-worker": time.time() + 3600})


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class Sentinel(threading.Thread):
    """GetStudy on a small study, every 10 ms, until told to stop and SAMPLES calls are in."""

    def __init__(self, stub: object, sid: str) -> None:
        super().__init__(daemon=True)
        self.stub, self.sid = stub, sid
        self.seconds: list[float] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() or len(self.seconds) < SAMPLES:
            start = time.perf_counter()
            try:
                self.stub.GetStudy(pb.GetStudyRequest(study_id=self.sid), timeout=30)
            except grpc.RpcError as e:
                self.failures.append(f"{e.code()}: {e.details()}")
            self.seconds.append(time.perf_counter() - start)
            time.sleep(0.01)


def test_corpus_every_answer_is_clear_and_a_bystander_stays_fast(server) -> None:
    _declare_custom_trainer(server)
    with server.client() as client:
        sentinel_study = client.create_study({
            "name": "sentinel", "algorithm": {"name": "random"}, "max_trials": 3,
            "resource": {"max_resource": 3}, "search_space": {
                "x": {"type": "float", "low": 0.0, "high": 1.0}}})
        asktell = client.create_study({
            "name": "asktell", "algorithm": {"name": "random"}, "max_trials": 5,
            "resource": {"max_resource": 9}, "search_space": {
                "x": {"type": "float", "low": 0.0, "high": 1.0}}})
        job = asktell.ask()
        asktell.ask()
        ok = client.create_study({**_dict_spec(), "trainer": "custom",
                                  "trainer_settings": {"depth": 3}})
        ok.stop()  # the declared setting is accepted (a control for the misspelled one)
        stub = client.stub
        trials_page = stub.ListTrials(pb.ListTrialsRequest(study_id=asktell.id, page_size=1))
        studies_page = stub.ListStudies(pb.ListStudiesRequest(page_size=1))
        assert trials_page.next_page_token and studies_page.next_page_token
        corpus = (malformed_cases() + spec_cases() + id_cases(asktell.id, job.id)
                  + job_cases(asktell.id, job.id)
                  + page_cases(asktell.id, sentinel_study.id, trials_page.next_page_token,
                               studies_page.next_page_token))
        sentinel = Sentinel(stub, sentinel_study.id)
        sentinel.start()
        unclear: dict[str, str] = {}
        rounds = 0
        # The corpus again and again until the sentinel has SAMPLES calls, so its p99 is a
        # percentile (the 3rd slowest of 200) and not the one slowest call.
        while rounds < 1 or (len(sentinel.seconds) < SAMPLES and rounds < 50):
            rounds += 1
            for case in corpus:
                code, details = call(client.channel, case)
                if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) \
                        or code != case.expect or (case.field and case.field not in details) \
                        or len(details) > 2100:
                    unclear[case.name] = (f"{case.name}: expected {case.expect.name} naming "
                                          f"{case.field!r}, got {code.name}: {details[:300]}")
        sentinel.done.set()
        sentinel.join(60)
        p99 = _p99(sentinel.seconds)
        print(f"\nbad-input corpus: tried {len(corpus)}, clear {len(corpus) - len(unclear)}, "
              f"unclear {len(unclear)} ({rounds} rounds); sentinel GetStudy p99 "
              f"{p99 * 1000:.1f} ms over {len(sentinel.seconds)} calls")
        assert not unclear, "\n".join(unclear.values())
        assert not sentinel.failures
        assert len(sentinel.seconds) >= SAMPLES
        # The one latency bound the service promises: a bad request never stalls the others.
        # Measured on a 2-core machine shared with other test runs (load average 7), the p99
        # was 27-35 ms (10 ms with no corpus running); the bound is the 100 ms.
        assert p99 < 0.100, sorted(sentinel.seconds)[-5:]
        # The ask/tell job survived every bad report: a good one still lands.
        assert job.report(1, 0.5) is False
        assert asktell.trial(job.trial_id).curve == [(1.0, 0.5)]


def _dict_spec() -> dict:
    return {"name": "declared", "algorithm": {"name": "random"}, "max_trials": 2,
            "resource": {"max_resource": 3},
            "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}


def test_malformed_bytes_name_the_broken_field(server) -> None:
    with grpc.insecure_channel(server.address) as ch:
        code, details = call(ch, Case("", hpod("CreateStudy"), b"\x0a\x06\x12\x04\x0a\x05ab",
                                      INVALID))
    assert code == INVALID
    assert "spec.search_space.name" in details and "hpod.v1.CreateStudyRequest" in details


def test_builtin_trainer_list_matches_the_trainer_registry() -> None:
    from hpod.server.service.checks import BUILTIN_TRAINERS
    from hpod.trainers.base import load_all

    assert set(BUILTIN_TRAINERS) == set(load_all())


# ---------------------------------------------------------------- pages


def test_pages_cover_every_study_and_trial_once_in_a_stable_order(tmp_path) -> None:
    with LocalCluster(workers=0, workdir=str(tmp_path)) as cluster, cluster.client() as client:
        created = [client.create_study({**_dict_spec(), "name": f"p{i}", "max_trials": 7}).id
                   for i in range(7)]
        stub = client.stub
        seen, token, pages = [], "", 0
        while True:
            resp = stub.ListStudies(pb.ListStudiesRequest(page_size=3, page_token=token))
            assert len(resp.studies) <= 3
            seen += [s.id for s in resp.studies]
            pages += 1
            if pages == 1:  # a study created mid-listing comes last, nothing shifts
                created.append(client.create_study(_dict_spec()).id)
            token = resp.next_page_token
            if not token:
                break
        assert seen == created and pages == 3
        assert [s.id for s in client.list_studies(page_size=2)] == created
        study = client.study(created[0])
        for _ in range(7):
            study.ask(wait=False)
        assert [t.id for t in study.trials(page_size=2)] == list(range(7))
        assert [t.id for t in study.trials()] == list(range(7))
        first = stub.ListTrials(pb.ListTrialsRequest(study_id=study.id, page_size=5000))
        assert len(first.trials) == 7 and not first.next_page_token
        # Large specs: a page stays under 3 MiB (gRPC clients take 4 MiB by default) whatever
        # page_size says, and paging still covers every study.
        wide = {**_dict_spec(), "search_space": {"c": {"type": "categorical", "choices": [
            f"{i:04d}" + "c" * 200 for i in range(1000)]}}}
        created += [client.create_study(wide).id for _ in range(25)]
        page = stub.ListStudies(pb.ListStudiesRequest(page_size=1000))
        assert page.next_page_token and len(page.studies) < len(created)
        assert 2 << 20 < page.ByteSize() <= 3 << 20
        assert [s.id for s in client.list_studies(page_size=1000)] == created


# ---------------------------------------------------------------- health follows Redis


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                    timeout=10).status


def _probe(address: str, *args: str) -> int:
    env = {**os.environ, "HPOD_PORT": address.rsplit(":", 1)[1]}
    return subprocess.run([sys.executable, "-m", "hpod.server.healthcheck", *args], env=env,
                          capture_output=True, timeout=60).returncode


def test_health_is_not_serving_while_redis_is_stopped(tmp_path) -> None:
    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                            health_pb2.HealthCheckResponse.NOT_SERVING)
    with LocalCluster(workers=0, workdir=str(tmp_path)) as cluster, cluster.client() as client:
        study = client.create_study(_dict_spec())
        assert _health(cluster.address) == serving
        quiet = client.create_study(_dict_spec())
        job = study.ask()
        pid = cluster.redis.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            # A write already on its way to Redis answers UNAVAILABLE within seconds, not when
            # Redis comes back (whether it took effect is known only then).
            with pytest.raises(grpc.RpcError) as err:
                client.stub.ReportProgress(pb.ReportProgressRequest(
                    study_id=study.id, job_id=job.id, resource=1, value=0.5), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            wait_for(lambda: _health(cluster.address) == not_serving, 30, "NOT_SERVING")
            # Reads of a study untouched meanwhile come from memory; writes are refused at
            # once, retryably.
            assert client.stub.GetStudy(pb.GetStudyRequest(study_id=quiet.id),
                                        timeout=10).id == quiet.id
            with pytest.raises(grpc.RpcError) as err:
                client.stub.CreateStudy(pb.CreateStudyRequest(spec=base_spec()), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "retry" in err.value.details()
            # The probe module: not ready, yet alive (a restart would not bring Redis back).
            assert _probe(cluster.address) == 1
            assert _probe(cluster.address, "--live") == 0
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: _health(cluster.address) == serving, 30, "SERVING again")
        assert client.stub.CreateStudy(pb.CreateStudyRequest(spec=base_spec()), timeout=10).id
        # The study whose write failed is reloaded from Redis; the report, sent again, lands
        # once (or is recognised as the one Redis took after all).
        client.study(study.id)  # a read: retried while the study reloads
        try:
            job.report(1, 0.5)
        except HpodError as e:
            assert e.code == grpc.StatusCode.FAILED_PRECONDITION and "duplicated" in e.message
        assert study.trial(job.trial_id).curve == [(1.0, 0.5)]


# ---------------------------------------------------------------- store errors, one piece


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message
        raise _Aborted


@pytest.mark.parametrize("error,code", [
    (redis.TimeoutError("Timeout reading from socket"), grpc.StatusCode.UNAVAILABLE),
    (redis.ConnectionError("Connection refused"), grpc.StatusCode.UNAVAILABLE),
    (redis.ResponseError("MISCONF Redis is configured to save RDB snapshots"),
     grpc.StatusCode.UNAVAILABLE),
    # As redis-py raises them: the class says what it is, the message lost its code.
    (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
     grpc.StatusCode.UNAVAILABLE),
    (redis.exceptions.ExecAbortError("Transaction discarded because of previous errors."),
     grpc.StatusCode.UNAVAILABLE),
    (redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
     grpc.StatusCode.UNAVAILABLE),
    (redis.ResponseError("WRONGTYPE Operation against a key"), grpc.StatusCode.INTERNAL),
    (ZeroDivisionError("a bug"), grpc.StatusCode.INTERNAL),
])
def test_store_errors_are_retryable_and_nothing_is_unknown(error: Exception,
                                                           code: grpc.StatusCode) -> None:
    import asyncio

    from hpod.server.service.servicer import rpc

    @rpc
    async def method(self: object, request: object, context: object) -> None:
        raise error

    ctx = _Context()
    with pytest.raises(_Aborted):
        asyncio.run(method(None, None, ctx))
    assert ctx.code == code and ctx.message
    if code == grpc.StatusCode.UNAVAILABLE:
        assert "retry" in ctx.message



def test_malformed_bytes_with_tokens_on(tmp_path) -> None:
    """With authentication on, a caller with a token gets INVALID_ARGUMENT for broken bytes,
    one without still gets UNAUTHENTICATED: decoding never fails before the token check."""
    from hpod.server.service.auth import hash_token

    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token('t-user')} team user\n")
    with LocalCluster(workers=0, workdir=str(tmp_path), server_args=(
            "--tokens-file", str(tokens)), client_options={"token": "t-user"}) as cluster, \
            grpc.insecure_channel(cluster.address) as ch:
        case = Case("", hpod("GetStudy"), b"\x0a\x10abc", INVALID)
        ident = (lambda b: b)  # noqa: E731
        rpc = ch.unary_unary(case.method, request_serializer=ident, response_deserializer=ident)
        for metadata, code in (((("authorization", "Bearer t-user"),), INVALID),
                               ((), grpc.StatusCode.UNAUTHENTICATED)):
            with pytest.raises(grpc.RpcError) as err:
                rpc(case.request, metadata=metadata, timeout=10)
            assert err.value.code() == code, err.value.details()


def test_redis_refusing_writes_is_unavailable_then_fine(tmp_path) -> None:
    """Redis out of memory (maxmemory hit, noeviction): every write answers UNAVAILABLE with
    a retry hint, nothing UNKNOWN; once Redis takes writes again, so does the server."""
    with LocalCluster(workers=0, workdir=str(tmp_path)) as cluster, cluster.client() as client:
        study = client.create_study(_dict_spec())
        job = study.ask()
        r = redis.Redis.from_url(cluster.redis_url)
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1)
        try:
            for make in (lambda: client.stub.CreateStudy(
                             pb.CreateStudyRequest(spec=base_spec()), timeout=20),
                         lambda: client.stub.ReportProgress(pb.ReportProgressRequest(
                             study_id=study.id, job_id=job.id, resource=1, value=0.5),
                             timeout=20)):
                with pytest.raises(grpc.RpcError) as err:
                    make()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
                assert "retry" in err.value.details()
        finally:
            r.config_set("maxmemory", 0)
        client.study(study.id)  # a read: retried while the study reloads
        assert job.report(1, 0.5) is False
        assert client.create_study(_dict_spec()).id
