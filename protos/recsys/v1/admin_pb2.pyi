from protos.recsys.v1 import versions_pb2 as _versions_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceStatus(_message.Message):
    __slots__ = ("model_name", "service", "live_version", "versions", "slot", "shard", "shards", "workers", "status_watchers", "index_endpoints", "not_answering")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    LIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    STATUS_WATCHERS_FIELD_NUMBER: _ClassVar[int]
    INDEX_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    NOT_ANSWERING_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    service: str
    live_version: int
    versions: _containers.RepeatedCompositeFieldContainer[_versions_pb2.VersionStatus]
    slot: str
    shard: int
    shards: int
    workers: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    status_watchers: int
    index_endpoints: _containers.RepeatedCompositeFieldContainer[IndexEndpointStatus]
    not_answering: str
    def __init__(self, model_name: _Optional[str] = ..., service: _Optional[str] = ..., live_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[_versions_pb2.VersionStatus, _Mapping]]] = ..., slot: _Optional[str] = ..., shard: _Optional[int] = ..., shards: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ..., status_watchers: _Optional[int] = ..., index_endpoints: _Optional[_Iterable[_Union[IndexEndpointStatus, _Mapping]]] = ..., not_answering: _Optional[str] = ...) -> None: ...

class IndexEndpointStatus(_message.Message):
    __slots__ = ("address", "slot", "shard", "shards", "versions", "problem")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    address: str
    slot: str
    shard: int
    shards: int
    versions: _containers.RepeatedCompositeFieldContainer[_versions_pb2.VersionStatus]
    problem: str
    def __init__(self, address: _Optional[str] = ..., slot: _Optional[str] = ..., shard: _Optional[int] = ..., shards: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[_versions_pb2.VersionStatus, _Mapping]]] = ..., problem: _Optional[str] = ...) -> None: ...

class LoadVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnloadVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ApplyCatalogueRequest(_message.Message):
    __slots__ = ("version", "generation")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    version: int
    generation: int
    def __init__(self, version: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...
