import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scale(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCALE_UNSPECIFIED: _ClassVar[Scale]
    SCALE_LINEAR: _ClassVar[Scale]
    SCALE_LOG: _ClassVar[Scale]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_MINIMIZE: _ClassVar[Direction]
    DIRECTION_MAXIMIZE: _ClassVar[Direction]

class StudyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STUDY_STATE_UNSPECIFIED: _ClassVar[StudyState]
    STUDY_STATE_ACTIVE: _ClassVar[StudyState]
    STUDY_STATE_COMPLETED: _ClassVar[StudyState]
    STUDY_STATE_STOPPED: _ClassVar[StudyState]
    STUDY_STATE_FAILED: _ClassVar[StudyState]
    STUDY_STATE_QUARANTINED: _ClassVar[StudyState]

class TrialState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATE_UNSPECIFIED: _ClassVar[TrialState]
    TRIAL_STATE_QUEUED: _ClassVar[TrialState]
    TRIAL_STATE_RUNNING: _ClassVar[TrialState]
    TRIAL_STATE_PAUSED: _ClassVar[TrialState]
    TRIAL_STATE_COMPLETED: _ClassVar[TrialState]
    TRIAL_STATE_STOPPED: _ClassVar[TrialState]
    TRIAL_STATE_FAILED: _ClassVar[TrialState]
    TRIAL_STATE_LOST: _ClassVar[TrialState]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_CONTINUE: _ClassVar[Decision]
    DECISION_STOP: _ClassVar[Decision]
SCALE_UNSPECIFIED: Scale
SCALE_LINEAR: Scale
SCALE_LOG: Scale
DIRECTION_UNSPECIFIED: Direction
DIRECTION_MINIMIZE: Direction
DIRECTION_MAXIMIZE: Direction
STUDY_STATE_UNSPECIFIED: StudyState
STUDY_STATE_ACTIVE: StudyState
STUDY_STATE_COMPLETED: StudyState
STUDY_STATE_STOPPED: StudyState
STUDY_STATE_FAILED: StudyState
STUDY_STATE_QUARANTINED: StudyState
TRIAL_STATE_UNSPECIFIED: TrialState
TRIAL_STATE_QUEUED: TrialState
TRIAL_STATE_RUNNING: TrialState
TRIAL_STATE_PAUSED: TrialState
TRIAL_STATE_COMPLETED: TrialState
TRIAL_STATE_STOPPED: TrialState
TRIAL_STATE_FAILED: TrialState
TRIAL_STATE_LOST: TrialState
DECISION_UNSPECIFIED: Decision
DECISION_CONTINUE: Decision
DECISION_STOP: Decision

class FloatRange(_message.Message):
    __slots__ = ("low", "high", "scale")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    scale: Scale
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ..., scale: _Optional[_Union[Scale, str]] = ...) -> None: ...

class IntRange(_message.Message):
    __slots__ = ("low", "high", "scale")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    low: int
    high: int
    scale: Scale
    def __init__(self, low: _Optional[int] = ..., high: _Optional[int] = ..., scale: _Optional[_Union[Scale, str]] = ...) -> None: ...

class Categorical(_message.Message):
    __slots__ = ("choices",)
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    choices: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    def __init__(self, choices: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ...) -> None: ...

class Parameter(_message.Message):
    __slots__ = ("name", "float_range", "int_range", "categorical")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FLOAT_RANGE_FIELD_NUMBER: _ClassVar[int]
    INT_RANGE_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    float_range: FloatRange
    int_range: IntRange
    categorical: Categorical
    def __init__(self, name: _Optional[str] = ..., float_range: _Optional[_Union[FloatRange, _Mapping]] = ..., int_range: _Optional[_Union[IntRange, _Mapping]] = ..., categorical: _Optional[_Union[Categorical, _Mapping]] = ...) -> None: ...

class Objective(_message.Message):
    __slots__ = ("metric", "direction")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    metric: str
    direction: Direction
    def __init__(self, metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ...) -> None: ...

class ResourceSpec(_message.Message):
    __slots__ = ("name", "min_resource", "max_resource", "eta")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MAX_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    name: str
    min_resource: float
    max_resource: float
    eta: int
    def __init__(self, name: _Optional[str] = ..., min_resource: _Optional[float] = ..., max_resource: _Optional[float] = ..., eta: _Optional[int] = ...) -> None: ...

class AlgorithmSpec(_message.Message):
    __slots__ = ("name", "settings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    settings: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StudySpec(_message.Message):
    __slots__ = ("name", "search_space", "objective", "resource", "algorithm", "seed", "max_trials", "trainer", "trainer_settings", "max_retries")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEARCH_SPACE_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    TRAINER_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    search_space: _containers.RepeatedCompositeFieldContainer[Parameter]
    objective: Objective
    resource: ResourceSpec
    algorithm: AlgorithmSpec
    seed: int
    max_trials: int
    trainer: str
    trainer_settings: _struct_pb2.Struct
    max_retries: int
    def __init__(self, name: _Optional[str] = ..., search_space: _Optional[_Iterable[_Union[Parameter, _Mapping]]] = ..., objective: _Optional[_Union[Objective, _Mapping]] = ..., resource: _Optional[_Union[ResourceSpec, _Mapping]] = ..., algorithm: _Optional[_Union[AlgorithmSpec, _Mapping]] = ..., seed: _Optional[int] = ..., max_trials: _Optional[int] = ..., trainer: _Optional[str] = ..., trainer_settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., max_retries: _Optional[int] = ...) -> None: ...

class Study(_message.Message):
    __slots__ = ("id", "spec", "state", "create_time", "trials_total", "trials_running", "trials_finished", "resource_used", "cost_used", "best_trial", "plan", "error", "checkpoint_bytes", "fidelity")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TRIALS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TRIALS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_USED_FIELD_NUMBER: _ClassVar[int]
    COST_USED_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: StudySpec
    state: StudyState
    create_time: _timestamp_pb2.Timestamp
    trials_total: int
    trials_running: int
    trials_finished: int
    resource_used: float
    cost_used: float
    best_trial: Trial
    plan: Plan
    error: str
    checkpoint_bytes: int
    fidelity: FidelityPolicy
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[StudySpec, _Mapping]] = ..., state: _Optional[_Union[StudyState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trials_total: _Optional[int] = ..., trials_running: _Optional[int] = ..., trials_finished: _Optional[int] = ..., resource_used: _Optional[float] = ..., cost_used: _Optional[float] = ..., best_trial: _Optional[_Union[Trial, _Mapping]] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., error: _Optional[str] = ..., checkpoint_bytes: _Optional[int] = ..., fidelity: _Optional[_Union[FidelityPolicy, _Mapping]] = ...) -> None: ...

class FidelityPolicy(_message.Message):
    __slots__ = ("trust", "bracket_start", "bracket_weights", "decisions")
    TRUST_FIELD_NUMBER: _ClassVar[int]
    BRACKET_START_FIELD_NUMBER: _ClassVar[int]
    BRACKET_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    trust: _containers.RepeatedCompositeFieldContainer[LevelTrust]
    bracket_start: _containers.RepeatedScalarFieldContainer[float]
    bracket_weights: _containers.RepeatedScalarFieldContainer[float]
    decisions: _containers.RepeatedCompositeFieldContainer[FidelityDecision]
    def __init__(self, trust: _Optional[_Iterable[_Union[LevelTrust, _Mapping]]] = ..., bracket_start: _Optional[_Iterable[float]] = ..., bracket_weights: _Optional[_Iterable[float]] = ..., decisions: _Optional[_Iterable[_Union[FidelityDecision, _Mapping]]] = ...) -> None: ...

class LevelTrust(_message.Message):
    __slots__ = ("resource", "rho", "against", "pairs", "agreement")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    AGAINST_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    resource: float
    rho: float
    against: float
    pairs: int
    agreement: float
    def __init__(self, resource: _Optional[float] = ..., rho: _Optional[float] = ..., against: _Optional[float] = ..., pairs: _Optional[int] = ..., agreement: _Optional[float] = ...) -> None: ...

class FidelityDecision(_message.Message):
    __slots__ = ("trial_id", "bracket", "start_resource", "why")
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    BRACKET_FIELD_NUMBER: _ClassVar[int]
    START_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    trial_id: int
    bracket: int
    start_resource: float
    why: str
    def __init__(self, trial_id: _Optional[int] = ..., bracket: _Optional[int] = ..., start_resource: _Optional[float] = ..., why: _Optional[str] = ...) -> None: ...

class Rung(_message.Message):
    __slots__ = ("n", "r")
    N_FIELD_NUMBER: _ClassVar[int]
    R_FIELD_NUMBER: _ClassVar[int]
    n: int
    r: float
    def __init__(self, n: _Optional[int] = ..., r: _Optional[float] = ...) -> None: ...

class Bracket(_message.Message):
    __slots__ = ("s", "rungs")
    S_FIELD_NUMBER: _ClassVar[int]
    RUNGS_FIELD_NUMBER: _ClassVar[int]
    s: int
    rungs: _containers.RepeatedCompositeFieldContainer[Rung]
    def __init__(self, s: _Optional[int] = ..., rungs: _Optional[_Iterable[_Union[Rung, _Mapping]]] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("brackets", "total_resource", "incremental_resource", "max_trials", "notes")
    BRACKETS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    INCREMENTAL_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    brackets: _containers.RepeatedCompositeFieldContainer[Bracket]
    total_resource: float
    incremental_resource: float
    max_trials: int
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, brackets: _Optional[_Iterable[_Union[Bracket, _Mapping]]] = ..., total_resource: _Optional[float] = ..., incremental_resource: _Optional[float] = ..., max_trials: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateStudyRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: StudySpec
    def __init__(self, spec: _Optional[_Union[StudySpec, _Mapping]] = ...) -> None: ...

class PlanStudyRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: StudySpec
    def __init__(self, spec: _Optional[_Union[StudySpec, _Mapping]] = ...) -> None: ...

class GetStudyRequest(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class ListStudiesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListStudiesResponse(_message.Message):
    __slots__ = ("studies", "next_page_token")
    STUDIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    studies: _containers.RepeatedCompositeFieldContainer[Study]
    next_page_token: str
    def __init__(self, studies: _Optional[_Iterable[_Union[Study, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StopStudyRequest(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class DeleteStudyRequest(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class DeleteStudyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RaiseMaxResourceRequest(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class CurvePoint(_message.Message):
    __slots__ = ("resource", "value")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    resource: float
    value: float
    def __init__(self, resource: _Optional[float] = ..., value: _Optional[float] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("study_id", "id", "config", "state", "curve", "resource", "has_value", "value", "bracket", "rung", "cost", "lost_jobs", "error", "samples_per_second", "warm_resumes", "segments", "checkpoint_bytes")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURVE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    HAS_VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BRACKET_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    LOST_JOBS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    WARM_RESUMES_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    id: int
    config: _struct_pb2.Struct
    state: TrialState
    curve: _containers.RepeatedCompositeFieldContainer[CurvePoint]
    resource: float
    has_value: bool
    value: float
    bracket: int
    rung: int
    cost: float
    lost_jobs: int
    error: str
    samples_per_second: float
    warm_resumes: int
    segments: int
    checkpoint_bytes: int
    def __init__(self, study_id: _Optional[str] = ..., id: _Optional[int] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., state: _Optional[_Union[TrialState, str]] = ..., curve: _Optional[_Iterable[_Union[CurvePoint, _Mapping]]] = ..., resource: _Optional[float] = ..., has_value: _Optional[bool] = ..., value: _Optional[float] = ..., bracket: _Optional[int] = ..., rung: _Optional[int] = ..., cost: _Optional[float] = ..., lost_jobs: _Optional[int] = ..., error: _Optional[str] = ..., samples_per_second: _Optional[float] = ..., warm_resumes: _Optional[int] = ..., segments: _Optional[int] = ..., checkpoint_bytes: _Optional[int] = ...) -> None: ...

class ListTrialsRequest(_message.Message):
    __slots__ = ("study_id", "include_curves", "page_size", "page_token")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CURVES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    include_curves: bool
    page_size: int
    page_token: str
    def __init__(self, study_id: _Optional[str] = ..., include_curves: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrialsResponse(_message.Message):
    __slots__ = ("trials", "next_page_token")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    next_page_token: str
    def __init__(self, trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTrialRequest(_message.Message):
    __slots__ = ("study_id", "trial_id")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    trial_id: int
    def __init__(self, study_id: _Optional[str] = ..., trial_id: _Optional[int] = ...) -> None: ...

class GetBestTrialRequest(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class TrialEvent(_message.Message):
    __slots__ = ("kind", "study_id", "trial_id", "resource", "value", "trial", "time", "study_state")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[TrialEvent.Kind]
        CREATED: _ClassVar[TrialEvent.Kind]
        PROGRESS: _ClassVar[TrialEvent.Kind]
        PROMOTED: _ClassVar[TrialEvent.Kind]
        PAUSED: _ClassVar[TrialEvent.Kind]
        STOPPED: _ClassVar[TrialEvent.Kind]
        COMPLETED: _ClassVar[TrialEvent.Kind]
        FAILED: _ClassVar[TrialEvent.Kind]
        LOST: _ClassVar[TrialEvent.Kind]
        STUDY_ENDED: _ClassVar[TrialEvent.Kind]
        RESUMED: _ClassVar[TrialEvent.Kind]
    KIND_UNSPECIFIED: TrialEvent.Kind
    CREATED: TrialEvent.Kind
    PROGRESS: TrialEvent.Kind
    PROMOTED: TrialEvent.Kind
    PAUSED: TrialEvent.Kind
    STOPPED: TrialEvent.Kind
    COMPLETED: TrialEvent.Kind
    FAILED: TrialEvent.Kind
    LOST: TrialEvent.Kind
    STUDY_ENDED: TrialEvent.Kind
    RESUMED: TrialEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STUDY_STATE_FIELD_NUMBER: _ClassVar[int]
    kind: TrialEvent.Kind
    study_id: str
    trial_id: int
    resource: float
    value: float
    trial: Trial
    time: _timestamp_pb2.Timestamp
    study_state: StudyState
    def __init__(self, kind: _Optional[_Union[TrialEvent.Kind, str]] = ..., study_id: _Optional[str] = ..., trial_id: _Optional[int] = ..., resource: _Optional[float] = ..., value: _Optional[float] = ..., trial: _Optional[_Union[Trial, _Mapping]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., study_state: _Optional[_Union[StudyState, str]] = ...) -> None: ...

class WatchStudyRequest(_message.Message):
    __slots__ = ("study_id", "include_progress")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    include_progress: bool
    def __init__(self, study_id: _Optional[str] = ..., include_progress: _Optional[bool] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("study_id", "job_id", "trial_id", "config", "from_resource", "to_resource", "bracket", "rung", "max_resource", "seed")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FROM_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    TO_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    BRACKET_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    MAX_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    job_id: str
    trial_id: int
    config: _struct_pb2.Struct
    from_resource: float
    to_resource: float
    bracket: int
    rung: int
    max_resource: float
    seed: int
    def __init__(self, study_id: _Optional[str] = ..., job_id: _Optional[str] = ..., trial_id: _Optional[int] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., from_resource: _Optional[float] = ..., to_resource: _Optional[float] = ..., bracket: _Optional[int] = ..., rung: _Optional[int] = ..., max_resource: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class AskJobRequest(_message.Message):
    __slots__ = ("study_id", "client_id")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    client_id: str
    def __init__(self, study_id: _Optional[str] = ..., client_id: _Optional[str] = ...) -> None: ...

class AskJobResponse(_message.Message):
    __slots__ = ("has_job", "job", "study_done", "retry_after_seconds")
    HAS_JOB_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    STUDY_DONE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    has_job: bool
    job: Job
    study_done: bool
    retry_after_seconds: float
    def __init__(self, has_job: _Optional[bool] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., study_done: _Optional[bool] = ..., retry_after_seconds: _Optional[float] = ...) -> None: ...

class ReportProgressRequest(_message.Message):
    __slots__ = ("study_id", "job_id", "resource", "value")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    job_id: str
    resource: float
    value: float
    def __init__(self, study_id: _Optional[str] = ..., job_id: _Optional[str] = ..., resource: _Optional[float] = ..., value: _Optional[float] = ...) -> None: ...

class ReportProgressResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ...) -> None: ...

class CompleteJobRequest(_message.Message):
    __slots__ = ("study_id", "job_id", "value", "resource", "cost")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    job_id: str
    value: float
    resource: float
    cost: float
    def __init__(self, study_id: _Optional[str] = ..., job_id: _Optional[str] = ..., value: _Optional[float] = ..., resource: _Optional[float] = ..., cost: _Optional[float] = ...) -> None: ...

class CompleteJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FailJobRequest(_message.Message):
    __slots__ = ("study_id", "job_id", "reason")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    job_id: str
    reason: str
    def __init__(self, study_id: _Optional[str] = ..., job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class FailJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetParetoFrontRequest(_message.Message):
    __slots__ = ("study_id",)
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    def __init__(self, study_id: _Optional[str] = ...) -> None: ...

class ParetoPoint(_message.Message):
    __slots__ = ("trial_id", "cost", "value", "config", "trial_ids")
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TRIAL_IDS_FIELD_NUMBER: _ClassVar[int]
    trial_id: int
    cost: float
    value: float
    config: _struct_pb2.Struct
    trial_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, trial_id: _Optional[int] = ..., cost: _Optional[float] = ..., value: _Optional[float] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., trial_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ScalingFit(_message.Message):
    __slots__ = ("parameter", "exponent", "coefficient", "intercept", "transform")
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    EXPONENT_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    INTERCEPT_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    parameter: str
    exponent: float
    coefficient: float
    intercept: float
    transform: str
    def __init__(self, parameter: _Optional[str] = ..., exponent: _Optional[float] = ..., coefficient: _Optional[float] = ..., intercept: _Optional[float] = ..., transform: _Optional[str] = ...) -> None: ...

class ParetoFront(_message.Message):
    __slots__ = ("points", "fits", "cost_source")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    COST_SOURCE_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[ParetoPoint]
    fits: _containers.RepeatedCompositeFieldContainer[ScalingFit]
    cost_source: str
    def __init__(self, points: _Optional[_Iterable[_Union[ParetoPoint, _Mapping]]] = ..., fits: _Optional[_Iterable[_Union[ScalingFit, _Mapping]]] = ..., cost_source: _Optional[str] = ...) -> None: ...
