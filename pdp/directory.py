"""The agent directory as the PDP sees it: an in-memory snapshot kept fresh by a change feed.

The hot path never calls the database: :meth:`Directory.agent` and :meth:`Directory.user`
are dictionary lookups. A background thread follows the store's change log (SQLite: a
polled change counter; PostgreSQL: LISTEN/NOTIFY) and applies each change, so a
suspension reaches every PDP replica within the feed's latency (well under a second).

The snapshot holds each agent and user as its typed record (:mod:`issuer.agents`, the one
reader of SCIM documents); what a policy sees is the record's attributes
(see docs/directory.md):

    agent.id             the SCIM id
    agent.name           name
    agent.roles          roles[].value
    agent.groups         displayName of each group that lists the agent as a member
    agent.owner          owner            (owner … labels: Tessera's agent extension)
    agent.purpose        purpose
    agent.risk           riskLevel
    agent.status         status
    agent.type           agentType
    agent.scopes         scopes
    agent.labels         labels as {key: value}

    user.id              the SCIM id
    user.userName        userName
    user.displayName     displayName
    user.externalId      externalId
    user.email           the primary emails[].value, else the first
    user.emails          every emails[].value
    user.roles           roles[].value
    user.groups          displayName of each group that lists the user as a member
    user.department      department       (department … manager: the enterprise user
    user.organization    organization      extension, RFC 7643 §4.3)
    user.division        division
    user.costCenter      costCenter
    user.employeeNumber  employeeNumber
    user.manager         manager.value (the manager's id)

    An attribute the directory lacks is absent (``has`` is false, reading it an error);
    roles, groups, emails and scopes are always there, perhaps empty.

    context.consents  the scopes the user granted the agent (the issuer's consent records);
                      whatever the caller sent is replaced

The resource catalog's entries written over the API follow the same feed, into
:attr:`Directory.catalog` (:mod:`pdp.catalog`).

A person may be the subject itself, named by SCIM id, userName, externalId or e-mail:
:attr:`Directory.people` finds them (:mod:`pdp.subjects`), its indexes rebuilt with the
users on each change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from issuer.agents import Agent, User, memberships
from issuer.catalog import CATALOG
from issuer.models import CONSENT, REVOKED
from issuer.store import Change, Store
from pdp.catalog import StoredEntries
from pdp.subjects import People

log = logging.getLogger("tessera.directory")

FEED_TIMEOUT = 0.5  # seconds one wait on the change feed may block (bounds stop())
MAX_STALENESS = 5.0  # seconds without a successful feed read before every request is refused
RETRY_DELAY = 1.0  # seconds between attempts while the store is unreachable


def _inactive(who: str, agent_id: str, agent: Agent | None) -> str | None:
    """Why an agent is refused (unknown, or not active), or None."""
    if agent is None:
        return f"{who} {agent_id!r} is not in the directory"
    if not agent.active:
        return f"{who} {agent_id!r} is {agent.attributes()['status']}"
    return None


class Identities(NamedTuple):
    """Who a request is about, as the directory knows them (request JSON attributes)."""

    agent: dict[str, Any]
    user: dict[str, Any] | None
    consents: tuple[str, ...] = ()  # the scopes the user granted this agent


class Directory:
    """Agents and users by id, as of the newest change applied (:attr:`version`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.version = 0  # the seq of the newest change applied
        self.synced = time.monotonic()  # when the store last answered the follower
        self._agents: dict[str, Agent] = {}
        self._user_docs: dict[str, dict[str, Any]] = {}  # SCIM documents
        self._groups: dict[str, dict[str, Any]] = {}  # SCIM documents
        self._members_of: dict[str, set[str]] = {}  # member id -> names of its groups
        self._users: dict[str, User] = {}  # from both: a group change changes its members
        self.people = People(self._users)  # the users by every id a caller may name them by
        self._consent_docs: dict[str, dict[str, Any]] = {}  # consent records by id
        self._consents: dict[tuple[str, str], tuple[str, ...]] = {}  # (user, agent) -> scopes
        self._revoked: dict[str, tuple[str, float]] = {}  # record id -> (jti, exp)
        self._revoked_jtis: dict[str, float] = {}  # jti -> exp: revoked access tokens
        self.catalog = StoredEntries()  # the resource catalog's entries made over the API
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one writer at a time (load and the feed)

    # -- reading (hot path: plain dictionary lookups)

    def agent(self, id: str) -> dict[str, Any] | None:
        """The agent's attributes, or None when the directory has no such agent."""
        agent = self._agents.get(id)
        return None if agent is None else agent.attributes()

    def agent_record(self, id: str) -> Agent | None:
        """The agent as the directory holds it, or None when it has no such agent."""
        return self._agents.get(id)

    def agent_ids(self) -> list[str]:
        """Every agent's id, sorted (active or not)."""
        return sorted(self._agents)

    def user(self, id: str) -> dict[str, Any] | None:
        """The user's attributes, or None when the directory has no such user."""
        user = self._users.get(id)
        return None if user is None else user.attributes()

    def person(self, id: str) -> User | None:
        """The user whose SCIM id is ``id``, or None when the directory has no such user."""
        return self._users.get(id)

    def users(self) -> list[User]:
        """Every user, by SCIM id (active or not)."""
        return [self._users[id] for id in sorted(self._users)]

    def stale(self) -> str | None:
        """Why the snapshot may miss changes (its follower has not heard from the store for
        :data:`MAX_STALENESS` seconds), or None while it keeps up."""
        if self._thread is not None and time.monotonic() - self.synced > MAX_STALENESS:
            return f"the directory has not been refreshed for over {MAX_STALENESS:g} s"
        return None

    def resolve(
        self, agent_id: str, user_id: str | None, chain: Iterable[str] = ()
    ) -> Identities | str:
        """The agent's (and user's) attributes, or why no request of theirs may be allowed.

        Refused whatever the policies say: an agent the directory does not know or that is
        not active, and likewise any other agent in the delegation ``chain``; a user it
        does not know or that is inactive; everyone, while the follower has not heard from
        the store for :data:`MAX_STALENESS` seconds (fail closed: a suspension made
        elsewhere might be missing).
        """
        stale = self.stale()
        if stale is not None:
            return stale
        agent = self._agents.get(agent_id)
        refusal = _inactive("agent", agent_id, agent)
        for actor in chain:
            if refusal is None and actor != agent_id:
                refusal = _inactive("delegating agent", actor, self._agents.get(actor))
        if refusal is not None:
            return refusal
        assert agent is not None  # _inactive refuses an agent the directory lacks
        if user_id is None:
            return Identities(agent.attributes(), None)
        user = self._users.get(user_id)
        if user is None:
            return f"user {user_id!r} is not in the directory"
        if not user.active:
            return f"user {user_id!r} is not active"
        consents = self._consents.get((user_id, agent_id), ())
        return Identities(agent.attributes(), user.attributes(), consents)

    # -- keeping up

    def load(self) -> None:
        """Read the whole directory, then every change since (safe to call again)."""
        with self._lock:
            since = self.store.last_change()
            groups = {r.id: r.data for r in self.store.list("Group")}
            names = memberships(groups.values())
            agents = {
                r.id: Agent.from_scim(r.id, r.data, names.get(r.id, ()))
                for r in self.store.list("Agent")
            }
            users = {r.id: r.data for r in self.store.list("User")}
            consents = {r.id: r.data for r in self.store.list(CONSENT)}
            now = time.time()
            revoked = {r.id: _revocation(r.data) for r in self.store.list(REVOKED)}
            self.catalog.load(self.store.list(CATALOG))
            self._agents, self._user_docs, self._groups = agents, users, groups
            self._members_of = names
            self._consent_docs = consents
            self._revoked = {id: entry for id, entry in revoked.items() if entry[1] > now}
            self._revoked_jtis = dict(self._revoked.values())
            self._rebuild_users()
            self._rebuild_consents()
            self.version = since
            self._catch_up()
            self.synced = time.monotonic()

    def refresh(self) -> bool:
        """Apply every change newer than :attr:`version`; say whether there were any."""
        with self._lock:
            return self._catch_up()

    def _catch_up(self) -> bool:
        applied = False
        while True:
            changes = self.store.changes(self.version)
            if not changes:
                return applied
            self._apply(changes)
            applied = True

    def _apply(self, changes: list[Change]) -> None:
        users_changed = groups_changed = consents_changed = False
        for change in changes:
            if change.kind == "Agent":
                if change.data is None:
                    self._agents.pop(change.id, None)
                else:
                    groups = self._members_of.get(change.id, ())
                    self._agents[change.id] = Agent.from_scim(change.id, change.data, groups)
            elif change.kind in ("User", "Group"):
                table = self._user_docs if change.kind == "User" else self._groups
                if change.data is None:
                    table.pop(change.id, None)
                else:
                    table[change.id] = change.data
                users_changed = True
                groups_changed = groups_changed or change.kind == "Group"
            elif change.kind == CONSENT:
                if change.data is None:
                    self._consent_docs.pop(change.id, None)
                else:
                    self._consent_docs[change.id] = change.data
                consents_changed = True
            elif change.kind == REVOKED:
                if change.data is None:
                    gone = self._revoked.pop(change.id, None)
                    if gone is not None:
                        self._revoked_jtis.pop(gone[0], None)
                else:
                    entry = self._revoked[change.id] = _revocation(change.data)
                    self._revoked_jtis[entry[0]] = entry[1]
            elif change.kind == CATALOG:
                self.catalog.apply(change)
        if groups_changed:
            self._members_of = memberships(self._groups.values())
            self._regroup_agents()
        if users_changed:
            self._rebuild_users()
        if consents_changed:
            self._rebuild_consents()
        # Last: a reader that sees the new version (and so empties its decision cache)
        # must also see everything that version brought.
        self.version = changes[-1].seq

    def revoked(self, jti: str) -> bool:
        """Whether this id (an access token's ``jti``, or an id of a token's ``lineage``)
        was revoked (RFC 7009) and the record still matters: past its ``exp``, no token
        it reaches is valid anyway."""
        expires = self._revoked_jtis.get(jti)
        return expires is not None and expires > time.time()

    def _rebuild_users(self) -> None:
        names = self._members_of
        users = {
            id: User.from_scim(id, doc, names.get(id, ())) for id, doc in self._user_docs.items()
        }
        self._users, self.people = users, People(users)

    def _regroup_agents(self) -> None:
        """Give each agent whose groups changed its new groups (the others stay as built)."""
        names = self._members_of
        regrouped = [
            agent.in_groups(names.get(id, ()))
            for id, agent in self._agents.items()
            if agent.groups != tuple(sorted(names.get(id, ())))
        ]
        for agent in regrouped:
            self._agents[agent.id] = agent

    def _rebuild_consents(self) -> None:
        granted: dict[tuple[str, str], set[str]] = {}
        for doc in self._consent_docs.values():
            key = (doc.get("user_id", ""), doc.get("agent_id", ""))
            granted.setdefault(key, set()).update(doc.get("scopes") or ())
        self._consents = {key: tuple(sorted(scopes)) for key, scopes in granted.items()}

    # -- the follower thread

    def start(self) -> None:
        """Load, then follow the change feed in a daemon thread until :meth:`stop`."""
        self.load()
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, name="directory-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=FEED_TIMEOUT + RETRY_DELAY + 1)
            self._thread = None

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                newest = self.store.wait_for_change(self.version, FEED_TIMEOUT)
                if newest > self.version:
                    self.refresh()
                self.synced = time.monotonic()
            except Exception:  # the thread must outlive any fault; resolve() fails closed
                log.exception("cannot follow the directory's change feed; retrying")
                self._stop.wait(RETRY_DELAY)


def _revocation(document: Mapping[str, Any]) -> tuple[str, float]:
    """A revoked token's record as (jti, expiry)."""
    return str(document.get("jti", "")), float(document.get("exp", 0))
