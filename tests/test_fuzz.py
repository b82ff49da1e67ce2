"""Fuzzing CreateStudy with hypothesis: whatever the spec, the server answers with a study or a
status code and a message, and keeps serving."""

from __future__ import annotations

import grpc
import pytest
from hpod.client.local import LocalCluster
from hpod.v1 import hpod_pb2 as pb

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
ALGORITHMS = ["random", "hyperband", "asha", "async-hyperband", "idhb", "cqr", "carbs"]

numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10).map(float)
names = st.text(max_size=12)
json_values = st.none() | st.booleans() | numbers.filter(lambda x: x == x) | names


def float_range() -> st.SearchStrategy:
    return st.builds(pb.FloatRange, low=numbers, high=numbers, scale=st.sampled_from([0, 1, 2]))


def int_range() -> st.SearchStrategy:
    ints = st.integers(-(2**40), 2**40) | st.integers(-5, 50)
    return st.builds(pb.IntRange, low=ints, high=ints, scale=st.sampled_from([0, 1, 2]))


def parameter() -> st.SearchStrategy:
    def build(name: str, kind: str, fr: pb.FloatRange, ir: pb.IntRange,
              choices: list) -> pb.Parameter:
        p = pb.Parameter(name=name)
        if kind == "float":
            p.float_range.CopyFrom(fr)
        elif kind == "int":
            p.int_range.CopyFrom(ir)
        elif kind == "cat":
            for c in choices:
                v = p.categorical.choices.add()
                if c is None:
                    v.null_value = 0
                elif isinstance(c, bool):
                    v.bool_value = c
                elif isinstance(c, float):
                    v.number_value = c
                else:
                    v.string_value = c
        return p

    return st.builds(build, names, st.sampled_from(["float", "int", "cat", "none"]),
                     float_range(), int_range(), st.lists(json_values, max_size=4))


def study_spec() -> st.SearchStrategy:
    def build(name, space, rmax, rmin, eta, algo, settings, seed, max_trials, trainer,
              retries) -> pb.StudySpec:
        spec = pb.StudySpec(name=name, search_space=space, seed=seed, max_trials=max_trials,
                            trainer=trainer)
        spec.resource.max_resource = rmax
        if rmin is not None:
            spec.resource.min_resource = rmin
        if eta is not None:
            spec.resource.eta = eta
        spec.algorithm.name = algo
        spec.algorithm.settings.update(settings)
        if retries is not None:
            spec.max_retries = retries
        return spec

    return st.builds(
        build, names, st.lists(parameter(), max_size=4), numbers, st.none() | numbers,
        st.none() | st.integers(-3, 10), st.sampled_from(ALGORITHMS) | names,
        st.dictionaries(st.sampled_from(["rounding", "iterations", "sampler", "x", "bogus"]),
                        json_values, max_size=3),
        st.integers(0, 2**64 - 1), st.integers(-5, 600), st.sampled_from(["", "analytic"]),
        st.none() | st.integers(-3, 5))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LocalCluster(workers=0, workdir=str(tmp_path_factory.mktemp("fuzz")),
                      server_args=("--max-trials-per-study", "2000")) as c, c.client() as client:
        yield client


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=study_spec())
def test_create_study_never_crashes_the_server(server, spec: pb.StudySpec) -> None:
    try:
        study = server.stub.CreateStudy(pb.CreateStudyRequest(spec=spec), timeout=10)
    except grpc.RpcError as e:
        assert e.code() in ALLOWED, (e.code(), e.details(), spec)
        assert e.details(), "a refusal says what is wrong"
    else:
        assert study.id
        server.stub.DeleteStudy(pb.DeleteStudyRequest(study_id=study.id), timeout=10)
    assert server.plan({"resource": {"max_resource": 9}, "algorithm": {"name": "hyperband"},
                        "search_space": {"x": {"type": "float", "low": 0, "high": 1}}}
                       ).max_trials == 17


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_garbage_bytes_get_a_status_with_a_message(server, raw: bytes) -> None:
    call = server.channel.unary_unary("/hpod.v1.Hpod/CreateStudy",
                                      request_serializer=lambda b: b,
                                      response_deserializer=pb.Study.FromString)
    try:
        study = call(raw, timeout=10)
    except grpc.RpcError as e:
        # Bytes that are not a CreateStudyRequest are refused before hpod's code runs, with
        # INVALID_ARGUMENT naming the broken field (server/service/decoding.py); anything that
        # decodes is hpod's to judge. Never UNKNOWN.
        assert e.code() in ALLOWED, (e.code(), e.details())
        assert e.details()
    else:
        server.stub.DeleteStudy(pb.DeleteStudyRequest(study_id=study.id), timeout=10)


METHODS = list(pb.DESCRIPTOR.services_by_name["Hpod"].methods)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), raw=st.binary(max_size=120))
def test_any_bytes_to_any_method_get_a_status_that_is_not_unknown(server, method,
                                                                   raw: bytes) -> None:
    ident = (lambda b: b)  # noqa: E731
    path = f"/hpod.v1.Hpod/{method.name}"
    try:
        if method.server_streaming:
            stream = server.channel.unary_stream(path, request_serializer=ident,
                                                 response_deserializer=ident)(raw, timeout=10)
            next(iter(stream))
            stream.cancel()
        else:
            server.channel.unary_unary(path, request_serializer=ident,
                                       response_deserializer=ident)(raw, timeout=10)
    except grpc.RpcError as e:
        assert e.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
            method.name, e.code(), e.details())
        assert e.details()
