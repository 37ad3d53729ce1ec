from protos.recsys.v1 import versions_pb2 as _versions_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResultSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_SOURCE_UNSPECIFIED: _ClassVar[ResultSource]
    RESULT_SOURCE_MODEL: _ClassVar[ResultSource]
    RESULT_SOURCE_POPULARITY_FALLBACK: _ClassVar[ResultSource]
RESULT_SOURCE_UNSPECIFIED: ResultSource
RESULT_SOURCE_MODEL: ResultSource
RESULT_SOURCE_POPULARITY_FALLBACK: ResultSource

class ScoredCandidate(_message.Message):
    __slots__ = ("candidate_id", "score")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    score: float
    def __init__(self, candidate_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("restricts", "ranges", "crowding_namespace", "max_per_value")
    RESTRICTS_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    CROWDING_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_VALUE_FIELD_NUMBER: _ClassVar[int]
    restricts: _containers.RepeatedCompositeFieldContainer[TokenRestrict]
    ranges: _containers.RepeatedCompositeFieldContainer[NumericRange]
    crowding_namespace: str
    max_per_value: int
    def __init__(self, restricts: _Optional[_Iterable[_Union[TokenRestrict, _Mapping]]] = ..., ranges: _Optional[_Iterable[_Union[NumericRange, _Mapping]]] = ..., crowding_namespace: _Optional[str] = ..., max_per_value: _Optional[int] = ...) -> None: ...

class TokenRestrict(_message.Message):
    __slots__ = ("namespace", "allow", "deny")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    allow: _containers.RepeatedScalarFieldContainer[str]
    deny: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., allow: _Optional[_Iterable[str]] = ..., deny: _Optional[_Iterable[str]] = ...) -> None: ...

class NumericRange(_message.Message):
    __slots__ = ("namespace", "min", "max")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    min: float
    max: float
    def __init__(self, namespace: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("customer_id", "k", "exclude_candidate_ids", "recent_candidate_ids", "exclude_seen", "filter")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    RECENT_CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    k: int
    exclude_candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    recent_candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_seen: bool
    filter: Filter
    def __init__(self, customer_id: _Optional[str] = ..., k: _Optional[int] = ..., exclude_candidate_ids: _Optional[_Iterable[str]] = ..., recent_candidate_ids: _Optional[_Iterable[str]] = ..., exclude_seen: _Optional[bool] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("candidates", "model_version", "cache_hit", "source", "model_name", "catalogue_generation")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[ScoredCandidate]
    model_version: int
    cache_hit: bool
    source: ResultSource
    model_name: str
    catalogue_generation: int
    def __init__(self, candidates: _Optional[_Iterable[_Union[ScoredCandidate, _Mapping]]] = ..., model_version: _Optional[int] = ..., cache_hit: _Optional[bool] = ..., source: _Optional[_Union[ResultSource, str]] = ..., model_name: _Optional[str] = ..., catalogue_generation: _Optional[int] = ...) -> None: ...

class RecommendSimilarRequest(_message.Message):
    __slots__ = ("candidate_id", "k", "exclude_candidate_ids", "filter")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    k: int
    exclude_candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: Filter
    def __init__(self, candidate_id: _Optional[str] = ..., k: _Optional[int] = ..., exclude_candidate_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class BatchRecommendRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecommendRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecommendRequest, _Mapping]]] = ...) -> None: ...

class BatchRecommendResponse(_message.Message):
    __slots__ = ("responses", "model_version")
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RecommendResponse]
    model_version: int
    def __init__(self, responses: _Optional[_Iterable[_Union[RecommendResponse, _Mapping]]] = ..., model_version: _Optional[int] = ...) -> None: ...

class RecordInteractionsRequest(_message.Message):
    __slots__ = ("customer_id", "candidate_ids")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, customer_id: _Optional[str] = ..., candidate_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordInteractionsResponse(_message.Message):
    __slots__ = ("history_length",)
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    history_length: int
    def __init__(self, history_length: _Optional[int] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embedding", "model_version", "known_customer", "model_name")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KNOWN_CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    model_version: int
    known_customer: bool
    model_name: str
    def __init__(self, embedding: _Optional[_Iterable[float]] = ..., model_version: _Optional[int] = ..., known_customer: _Optional[bool] = ..., model_name: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("vector", "k", "model_version", "exclude_candidate_ids", "filter", "by_popularity")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    BY_POPULARITY_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    k: int
    model_version: int
    exclude_candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: Filter
    by_popularity: bool
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., model_version: _Optional[int] = ..., exclude_candidate_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., by_popularity: _Optional[bool] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("candidates", "model_version", "model_name", "catalogue_generation", "query_vector", "crowding", "catalogue_changing")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    CROWDING_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_CHANGING_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[ScoredCandidate]
    model_version: int
    model_name: str
    catalogue_generation: int
    query_vector: _containers.RepeatedScalarFieldContainer[float]
    crowding: _containers.RepeatedCompositeFieldContainer[CrowdingTokens]
    catalogue_changing: bool
    def __init__(self, candidates: _Optional[_Iterable[_Union[ScoredCandidate, _Mapping]]] = ..., model_version: _Optional[int] = ..., model_name: _Optional[str] = ..., catalogue_generation: _Optional[int] = ..., query_vector: _Optional[_Iterable[float]] = ..., crowding: _Optional[_Iterable[_Union[CrowdingTokens, _Mapping]]] = ..., catalogue_changing: _Optional[bool] = ...) -> None: ...

class CrowdingTokens(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchSimilarRequest(_message.Message):
    __slots__ = ("candidate_id", "k", "model_version", "exclude_candidate_ids", "filter", "return_vector")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    RETURN_VECTOR_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    k: int
    model_version: int
    exclude_candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: Filter
    return_vector: bool
    def __init__(self, candidate_id: _Optional[str] = ..., k: _Optional[int] = ..., model_version: _Optional[int] = ..., exclude_candidate_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., return_vector: _Optional[bool] = ...) -> None: ...

class BatchSearchRequest(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, queries: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class BatchSearchResponse(_message.Message):
    __slots__ = ("results", "model_version", "catalogue_generation")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOGUE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    model_version: int
    catalogue_generation: int
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ..., model_version: _Optional[int] = ..., catalogue_generation: _Optional[int] = ...) -> None: ...

class WatchStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IndexStatus(_message.Message):
    __slots__ = ("model_name", "slot", "versions", "keepalive_s", "shard", "shards")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_S_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    slot: str
    versions: _containers.RepeatedCompositeFieldContainer[_versions_pb2.VersionStatus]
    keepalive_s: float
    shard: int
    shards: int
    def __init__(self, model_name: _Optional[str] = ..., slot: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[_versions_pb2.VersionStatus, _Mapping]]] = ..., keepalive_s: _Optional[float] = ..., shard: _Optional[int] = ..., shards: _Optional[int] = ...) -> None: ...
