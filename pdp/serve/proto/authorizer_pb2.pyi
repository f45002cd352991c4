from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Money(_message.Message):
    __slots__ = ("amount", "currency")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    amount: str
    currency: str
    def __init__(self, amount: _Optional[str] = ..., currency: _Optional[str] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ValueList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class ValueMap(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.MessageMap[str, Value]
    def __init__(self, values: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("string", "number", "bool", "money", "risk", "duration", "time", "ip", "strings", "list", "map", "integer")
    STRING_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    BOOL_FIELD_NUMBER: _ClassVar[int]
    MONEY_FIELD_NUMBER: _ClassVar[int]
    RISK_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    string: str
    number: float
    bool: bool
    money: Money
    risk: str
    duration: str
    time: str
    ip: str
    strings: StringList
    list: ValueList
    map: ValueMap
    integer: int
    def __init__(self, string: _Optional[str] = ..., number: _Optional[float] = ..., bool: _Optional[bool] = ..., money: _Optional[_Union[Money, _Mapping]] = ..., risk: _Optional[str] = ..., duration: _Optional[str] = ..., time: _Optional[str] = ..., ip: _Optional[str] = ..., strings: _Optional[_Union[StringList, _Mapping]] = ..., list: _Optional[_Union[ValueList, _Mapping]] = ..., map: _Optional[_Union[ValueMap, _Mapping]] = ..., integer: _Optional[int] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("id", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    attributes: _containers.MessageMap[str, Value]
    def __init__(self, id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("id", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    attributes: _containers.MessageMap[str, Value]
    def __init__(self, id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Delegation(_message.Message):
    __slots__ = ("chain",)
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    chain: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chain: _Optional[_Iterable[str]] = ...) -> None: ...

class Subject(_message.Message):
    __slots__ = ("type", "id", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    properties: _containers.MessageMap[str, Value]
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., properties: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("type", "id", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    attributes: _containers.MessageMap[str, Value]
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("agent", "user", "delegation", "action", "resource", "context", "agent_token", "subject")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    AGENT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    AGENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    user: User
    delegation: Delegation
    action: str
    resource: Resource
    context: _containers.MessageMap[str, Value]
    agent_token: str
    subject: Subject
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., user: _Optional[_Union[User, _Mapping]] = ..., delegation: _Optional[_Union[Delegation, _Mapping]] = ..., action: _Optional[str] = ..., resource: _Optional[_Union[Resource, _Mapping]] = ..., context: _Optional[_Mapping[str, Value]] = ..., agent_token: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ...) -> None: ...

class Obligation(_message.Message):
    __slots__ = ("kind", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    value: str
    def __init__(self, kind: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class RuleError(_message.Message):
    __slots__ = ("rule", "effect", "message")
    RULE_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    rule: str
    effect: str
    message: str
    def __init__(self, rule: _Optional[str] = ..., effect: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("allow", "obligations", "decided_by", "reasons", "decision_id", "bundle_version", "errors", "cacheable")
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    OBLIGATIONS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    CACHEABLE_FIELD_NUMBER: _ClassVar[int]
    allow: bool
    obligations: _containers.RepeatedCompositeFieldContainer[Obligation]
    decided_by: _containers.RepeatedScalarFieldContainer[str]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    decision_id: str
    bundle_version: str
    errors: _containers.RepeatedCompositeFieldContainer[RuleError]
    cacheable: bool
    def __init__(self, allow: _Optional[bool] = ..., obligations: _Optional[_Iterable[_Union[Obligation, _Mapping]]] = ..., decided_by: _Optional[_Iterable[str]] = ..., reasons: _Optional[_Iterable[str]] = ..., decision_id: _Optional[str] = ..., bundle_version: _Optional[str] = ..., errors: _Optional[_Iterable[_Union[RuleError, _Mapping]]] = ..., cacheable: _Optional[bool] = ...) -> None: ...

class AuthorizeBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[AuthorizeRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[AuthorizeRequest, _Mapping]]] = ...) -> None: ...

class AuthorizeBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[AuthorizeResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[AuthorizeResponse, _Mapping]]] = ...) -> None: ...

class ListAllowedRequest(_message.Message):
    __slots__ = ("agent", "user", "delegation", "action", "candidates", "context", "agent_token", "subject")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    AGENT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    AGENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    user: User
    delegation: Delegation
    action: str
    candidates: _containers.RepeatedCompositeFieldContainer[Resource]
    context: _containers.MessageMap[str, Value]
    agent_token: str
    subject: Subject
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., user: _Optional[_Union[User, _Mapping]] = ..., delegation: _Optional[_Union[Delegation, _Mapping]] = ..., action: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ..., context: _Optional[_Mapping[str, Value]] = ..., agent_token: _Optional[str] = ..., subject: _Optional[_Union[Subject, _Mapping]] = ...) -> None: ...

class ListAllowedResponse(_message.Message):
    __slots__ = ("allowed", "bundle_version", "consent_required")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONSENT_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    allowed: _containers.RepeatedCompositeFieldContainer[Resource]
    bundle_version: str
    consent_required: _containers.RepeatedCompositeFieldContainer[Resource]
    def __init__(self, allowed: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ..., bundle_version: _Optional[str] = ..., consent_required: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ...) -> None: ...
