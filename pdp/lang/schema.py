"""The types of request attributes, declared by ``schema { … }`` blocks plus built-ins.

The checker types expressions against a :class:`SchemaModel`; the request loader uses the
same model to turn request JSON into typed values, so a rule never meets a value of the
wrong type at run time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pdp.lang import ast
from pdp.lang.errors import Diagnostic, Sources

SCALARS = ("string", "number", "bool", "risk", "money", "duration", "time", "date", "ip")
CONTAINERS = ("set", "list", "map")


@dataclass(frozen=True, slots=True)
class Type:
    """A policy-language type: a scalar, or set/list/map of an element type."""

    name: str
    arg: Type | None = None

    def __str__(self) -> str:
        return f"{self.name}<{self.arg}>" if self.arg else self.name

    @property
    def currency(self) -> str | None:
        """The one currency of a ``money<USD>`` type, else None."""
        return self.arg.name if self.name == "money" and self.arg is not None else None

    @property
    def is_collection(self) -> bool:
        return self.name in ("set", "list")


STRING = Type("string")
NUMBER = Type("number")
BOOL = Type("bool")
RISK = Type("risk")
MONEY = Type("money")
DURATION = Type("duration")
TIME = Type("time")
DATE = Type("date")
WEEKDAY = Type("weekday")  # what weekday(t) gives; no attribute is declared as one
IP = Type("ip")
NETWORK = Type("network")
ANY = Type("any")
STRINGS = Type("set", STRING)

AGENT_SUBJECT = "agent"
"""The subject type of an agent: policies read it as ``agent.*``."""

PERSONS = ("user", "identity")
"""The subject types that name a person (AuthZEN's interop scenarios ask about both):
policies read a person as ``user.*``, typed by the ``user { … }`` block."""

# Attributes typed alike in every bundle, whatever the schema says: the ids every request
# has, and what the directory knows of every agent and user whatever the deployment (the
# core SCIM attributes and group membership; docs/directory.md). A request may lack any
# but the ids (an attribute the directory lacks is absent); a schema may declare them
# again only with these types. The extensions' attributes (the agent's risk, the
# enterprise user's department…) are declared by the schema.
BUILTINS: dict[str, dict[str, Type]] = {
    "agent": {"id": STRING, "name": STRING, "roles": STRINGS, "groups": STRINGS},
    "user": {
        "id": STRING,
        "userName": STRING,
        "displayName": STRING,
        "externalId": STRING,
        "email": STRING,
        "emails": STRINGS,
        "roles": STRINGS,
        "groups": STRINGS,
    },
    "delegation": {"delegated": BOOL, "depth": NUMBER, "chain": Type("list", STRING)},
    "resource": {"id": STRING, "type": STRING},
    "tool": {"name": STRING},
    "context": {"consents": STRINGS, "acr": STRING},
    "subject": {"type": STRING, "id": STRING},
}


@dataclass
class SchemaModel:
    """Attribute types by entity; resources by type name."""

    agent: dict[str, Type] = field(default_factory=lambda: dict(BUILTINS["agent"]))
    user: dict[str, Type] = field(default_factory=lambda: dict(BUILTINS["user"]))
    context: dict[str, Type] = field(default_factory=lambda: dict(BUILTINS["context"]))
    resources: dict[str, dict[str, Type]] = field(default_factory=dict)
    # subject types other than agents and persons (``subject TYPE { … }``), by name
    subjects: dict[str, dict[str, Type]] = field(default_factory=dict)
    # request_types by resource type, made on first use (a schema is not changed once
    # requests are typed against it)
    _request_types: dict[str, dict[str, Type]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def entity(self, kind: str) -> dict[str, Type]:
        if kind == "agent":
            return self.agent
        if kind == "user":
            return self.user
        if kind == "context":
            return self.context
        if kind == "delegation":
            return BUILTINS["delegation"]
        raise KeyError(kind)

    def resource_attrs(self, resource_type: str | None) -> dict[str, Type]:
        """Attributes of one resource type, or of every type when it is not known."""
        if resource_type is not None:
            declared = self.resources.get(resource_type, {})
            merged = dict(declared)
            merged.update(BUILTINS["resource"])
            if resource_type == ast.TOOL_TYPE:
                merged.update(BUILTINS["tool"])
            return merged
        merged = {}
        for attrs in self.resources.values():
            merged.update(attrs)
        merged.update(BUILTINS["resource"])
        return merged

    def request_types(self, resource_type: str) -> dict[str, Type]:
        """The types a request's resource attributes are read as: its own type's, and
        those any resource type declares (a rule without a resource type reads them)."""
        types = self._request_types.get(resource_type)
        if types is None:
            types = {**self.resource_attrs(None), **self.resources.get(resource_type, {})}
            self._request_types[resource_type] = types
        return types

    def subject_attrs(self, subject_type: str | None = None) -> dict[str, Type]:
        """``subject.*``: the built-in ``type`` and ``id``, and the attributes one declared
        subject type has (of every declared type when ``subject_type`` is None: a rule
        reads them whatever the subject's type, as it reads resource attributes)."""
        if subject_type is not None:
            merged = dict(self.subjects.get(subject_type, {}))
        else:
            merged = {}
            for attrs in self.subjects.values():
                merged.update(attrs)
        merged.update(BUILTINS["subject"])
        return merged

    def subject_types(self) -> tuple[str, ...]:
        """Every subject type a request may name: agents, persons, then the declared."""
        return (AGENT_SUBJECT, *PERSONS, *sorted(self.subjects))

    def tool_attrs(self) -> dict[str, Type]:
        merged = dict(self.resources.get(ast.TOOL_TYPE, {}))
        merged.update(BUILTINS["tool"])
        return merged

    def root_attrs(self, root: str, resource_type: str | None = None) -> dict[str, Type] | None:
        """The attributes a path's root offers (``resource.*`` those of ``resource_type``,
        a rule's target); None for a root without attributes (``action``, ``now``)."""
        if root in ("agent", "user", "context", "delegation"):
            return self.entity(root)
        if root == "resource":
            return self.resource_attrs(resource_type)
        if root == "subject":
            return self.subject_attrs()
        if root == "tool":
            return self.tool_attrs()
        return None


def attribute_key(root: str, name: str) -> str:
    """What a diagnostic about an attribute's declaration, and each read of it, are keyed
    by (:mod:`pdp.lang.diagnostics`): ``tool.*`` reads resource attributes."""
    return f"attribute {'resource' if root == 'tool' else root}.{name}"


def type_from_ref(ref: ast.TypeRef, sources: Sources, out: list[Diagnostic]) -> Type | None:
    """Resolve a written type; report unknown names and missing or extra arguments."""
    if ref.name == "money" and ref.arg is not None:
        # money<USD>: amounts of one currency only.
        code = ref.arg.name
        if ref.arg.arg is not None or len(code) != 3 or not code.isalpha() or not code.isupper():
            out.append(
                sources.diagnostic(
                    "error",
                    f"money<{ref.arg}>: a currency is three capital letters",
                    ref.span,
                    "write: money<USD>, or money for any currency",
                )
            )
            return None
        return Type("money", Type(code))
    if ref.name in SCALARS:
        if ref.arg is not None:
            out.append(
                sources.diagnostic(
                    "error", f"{ref.name} takes no element type", ref.span, f"write: {ref.name}"
                )
            )
            return None
        return Type(ref.name)
    if ref.name in CONTAINERS:
        if ref.arg is None:
            out.append(
                sources.diagnostic(
                    "error",
                    f"{ref.name} needs an element type",
                    ref.span,
                    f"write: {ref.name}<string>",
                )
            )
            return None
        arg = type_from_ref(ref.arg, sources, out)
        return Type(ref.name, arg) if arg is not None else None
    import difflib

    close = difflib.get_close_matches(ref.name, SCALARS + CONTAINERS, n=1)
    hint = (
        f"did you mean '{close[0]}'?"
        if close
        else "types are " + ", ".join(SCALARS) + ", set<T>, list<T>, map<T>"
    )
    out.append(sources.diagnostic("error", f"unknown type '{ref.name}'", ref.span, hint))
    return None


def build_schema(
    schemas: list[ast.Schema], sources: Sources
) -> tuple[SchemaModel, list[Diagnostic]]:
    """Merge every ``schema`` block of a bundle into one model."""
    model = SchemaModel()
    out: list[Diagnostic] = []
    for schema in schemas:
        for decl in schema.entities:
            if decl.kind == "resource":
                assert decl.resource_type is not None
                target = model.resources.setdefault(decl.resource_type, {})
                builtins = BUILTINS["resource"]
            elif decl.kind == "subject":
                assert decl.resource_type is not None
                if _builtin_subject(decl, sources, out):
                    continue
                target = model.subjects.setdefault(decl.resource_type, {})
                builtins = BUILTINS["subject"]
            else:
                target = model.entity(decl.kind)
                builtins = BUILTINS[decl.kind]
            for attr in decl.attrs:
                before = len(out)
                declared = type_from_ref(attr.type, sources, out)
                if declared is None:
                    # Every read of the attribute fails because of this: it is their root.
                    key = attribute_key(decl.kind, attr.name)
                    out[before:] = [dataclasses.replace(d, key=key) for d in out[before:]]
                    continue
                if attr.name in builtins and builtins[attr.name] != declared:
                    out.append(
                        sources.diagnostic(
                            "error",
                            f"{decl.kind}.{attr.name} is built in as {builtins[attr.name]}",
                            attr.span,
                            "remove it from the schema or declare it with that type",
                        )
                    )
                    continue
                previous = target.get(attr.name)
                if previous is not None and previous != declared:
                    out.append(
                        sources.diagnostic(
                            "error",
                            f"{decl.kind}.{attr.name} is declared twice with different "
                            f"types ({previous} and {declared})",
                            attr.span,
                        )
                    )
                    continue
                target[attr.name] = declared
    return model, out


def _builtin_subject(decl: ast.EntityDecl, sources: Sources, out: list[Diagnostic]) -> bool:
    """Whether a ``subject TYPE`` block names a type the language has built in (agents and
    persons have their own blocks); reported if so."""
    name = decl.resource_type
    if name != AGENT_SUBJECT and name not in PERSONS:
        return False
    block = "agent" if name == AGENT_SUBJECT else "user"
    out.append(
        sources.diagnostic(
            "error",
            f"subject {name} is built in: its attributes are {block}.*",
            decl.span,
            f"declare them in {block} {{ … }}; a subject block names another type, "
            "such as subject service { team: string }",
        )
    )
    return True
