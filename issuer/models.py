"""The directory's SCIM 2.0 resources: agents (Tessera's schemas), users and groups.

Agents are a resource type of Tessera's own (RFC 7643 §6 lets a service define one):
the core schema :data:`AGENT_SCHEMA` holds the agent's unique ``name`` and a
``displayName``; the required extension :data:`AGENT_EXTENSION` holds what governance
needs (owner, purpose, riskLevel, agentType, status, model, description, callbackUrl,
scopes, labels); an agent has ``roles`` as a user has. Users are RFC 7643 §4.1 users (the
humans agents act for, with ``roles``; ``groups`` is read-only, derived from group
membership), with the enterprise user extension (RFC 7643 §4.3) as an optional one.
Groups are RFC 7643 §4.2 groups whose members are users, agents or groups. scim2-models
does the validation and serialization.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field
from scim2_models import (
    URN,
    CaseExact,
    ComplexAttribute,
    EnterpriseUser,
    Extension,
    Group,
    Mutability,
    Reference,
    Required,
    Resource,
    ResourceType,
    Role,
    ScimProvider,
    ServiceProviderConfig,
    Uniqueness,
    User,
)

# Written once, with the directory's facts; re-exported for code that takes the schema
# URNs from the SCIM models.
from issuer.agents import AGENT_EXTENSION as AGENT_EXTENSION
from issuer.agents import AGENT_SCHEMA as AGENT_SCHEMA
from issuer.agents import ENTERPRISE_EXTENSION as ENTERPRISE_EXTENSION
from issuer.agents import AgentStatus, AgentType, RiskLevel
from issuer.strength import AcrLevel

CONSENT = "Consent"
"""The store kind of a user's consent: ``{"user_id", "agent_id", "client_id", "scopes"}``,
one record per user, client and agent (the PDP sees the scopes as ``context.consents``)."""

REVOKED = "RevokedToken"
"""The store kind of a revocation (RFC 7009): ``{"jti", "exp", "sub"}``; ``jti`` is the id
revoked (an access token's, or an authorization's, which the tokens it gave name in their
``lineage``), ``exp`` when the record stops mattering (:mod:`issuer.oauth.revocation`)."""

MAX_RESULTS = 200
"""The most resources one list response carries (ServiceProviderConfig filter.maxResults)."""


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be blank")
    return value


NotBlank = AfterValidator(_not_blank)
"""A required string must say something: SCIM counts "" as a value, Tessera does not."""


class Label(ComplexAttribute):
    """A key/value label on an agent (the PDP sees them as ``agent.labels``)."""

    key: Annotated[str | None, Required.true, CaseExact.true] = None
    """The label's name."""

    value: Annotated[str | None, CaseExact.true] = None
    """The label's value."""


class AgentExtension(Extension):
    """Tessera's agent extension: who answers for an agent, what it is for, its risk."""

    __schema__ = URN(AGENT_EXTENSION)

    owner: Annotated[str | None, Required.true, NotBlank] = None
    """The person or team accountable for the agent."""

    purpose: str | None = None
    """What the agent is for, e.g. "payments"; policies match on it."""

    risk_level: Annotated[RiskLevel | None, Required.true] = None
    """low, medium, high or critical."""

    agent_type: Annotated[AgentType | None, Required.true] = None
    """interactive, background (the default) or external."""

    status: Annotated[AgentStatus | None, Required.true] = None
    """active (the default), suspended or retired."""

    model: str | None = None
    """The model the agent runs on, e.g. "gpt-5"."""

    description: str | None = None
    """Free text for people."""

    callback_url: str | None = None
    """Where the agent receives notifications (informational)."""

    scopes: list[str] | None = None
    """The OAuth scopes the agent may be granted."""

    labels: list[Label] | None = None
    """Key/value labels."""

    minimum_acr: Annotated[AcrLevel | None, CaseExact.true] = None
    """The weakest authentication its tokens may carry, a level of the acr ladder such as
    "urn:tessera:acr:key+mtls"; by default "urn:tessera:acr:key" for high- and
    critical-risk and external agents, and any level for the others."""


class Agent(Resource[Any]):
    """An AI agent: a first-class identity in the directory."""

    __schema__ = URN(AGENT_SCHEMA)

    name: Annotated[str | None, Required.true, Uniqueness.server, NotBlank] = None
    """The agent's unique name, e.g. "pay-bot" (case-insensitive)."""

    display_name: str | None = None
    """A human-readable name."""

    roles: list[Role] | None = None
    """The agent's roles, as a User's (RFC 7643 §4.1.2); policies read the values."""


class Manager(ComplexAttribute):
    """The enterprise extension's ``manager`` (RFC 7643 §4.3), whose ``value`` and
    ``$ref`` are RECOMMENDED there, not required: provisioning clients send the manager's
    id alone."""

    value: Annotated[str | None, CaseExact.true] = None
    """The id of the manager's User resource."""

    ref: Reference[User] | None = Field(  # type: ignore[type-arg]
        None, serialization_alias="$ref", validation_alias="$ref"
    )
    """The URI of the manager's User resource."""

    display_name: Annotated[str | None, Mutability.read_only] = None
    """The manager's displayName."""


class EnterpriseUserExtension(EnterpriseUser):
    """The enterprise user extension (RFC 7643 §4.3), with a manager given by id alone."""

    manager: Manager | None = None  # type: ignore[assignment]
    """The user's manager."""


UserResource = User[EnterpriseUserExtension]  # type: ignore[misc]
"""A user with the (optional) enterprise extension: the model the service validates."""


AgentResource = Agent[Annotated[AgentExtension, Required.true]]  # type: ignore[misc,type-arg]
"""An agent with its (required) extension: the model the service validates against."""


def service_provider_config() -> ServiceProviderConfig:
    """What the service supports (RFC 7643 §5), exactly what it implements."""
    return ServiceProviderConfig.model_validate(
        {
            "patch": {"supported": True},
            "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": True, "maxResults": MAX_RESULTS},
            "changePassword": {"supported": True},
            "sort": {"supported": True},
            "etag": {"supported": True},
            "authenticationSchemes": [
                {
                    "type": "oauthbearertoken",
                    "name": "OAuth Bearer Token",
                    "description": "A bearer token with the tessera:admin scope (RFC 6750).",
                    "specUri": "https://www.rfc-editor.org/rfc/rfc6750",
                    "primary": True,
                }
            ],
        }
    )


def _resource_type(model: type[Resource[Any]], name: str, description: str) -> ResourceType:
    resource_type = ResourceType.from_resource(model)
    resource_type.description = description
    return resource_type.model_copy(update={"id": name, "name": name})


PROVIDER = ScimProvider(
    models=[Agent, AgentExtension, User, EnterpriseUserExtension, Group],
    resource_types=[
        _resource_type(AgentResource, "Agent", "AI agents, with Tessera's agent extension"),
        _resource_type(UserResource, "User", "People agents act for"),
        _resource_type(Group, "Group", "Groups of users, agents and groups"),
    ],
    config=service_provider_config(),
)
"""The service's schemas, resource types and configuration."""
