from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATE_UNSPECIFIED: _ClassVar[VersionState]
    VERSION_STATE_LOADING: _ClassVar[VersionState]
    VERSION_STATE_READY: _ClassVar[VersionState]
    VERSION_STATE_SERVING: _ClassVar[VersionState]
    VERSION_STATE_ROLLBACK_TARGET: _ClassVar[VersionState]
VERSION_STATE_UNSPECIFIED: VersionState
VERSION_STATE_LOADING: VersionState
VERSION_STATE_READY: VersionState
VERSION_STATE_SERVING: VersionState
VERSION_STATE_ROLLBACK_TARGET: VersionState

class VersionStatus(_message.Message):
    __slots__ = ("version", "state", "num_candidates", "embedding_dim", "self_test_recall_at_10", "memory_bytes", "load_seconds", "catalogue_generation", "self_test_generation")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    SELF_TEST_RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    SELF_TEST_GENERATION_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: VersionState
    num_candidates: int
    embedding_dim: int
    self_test_recall_at_10: float
    memory_bytes: int
    load_seconds: float
    catalogue_generation: int
    self_test_generation: int
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[VersionState, str]] = ..., num_candidates: _Optional[int] = ..., embedding_dim: _Optional[int] = ..., self_test_recall_at_10: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., load_seconds: _Optional[float] = ..., catalogue_generation: _Optional[int] = ..., self_test_generation: _Optional[int] = ...) -> None: ...
