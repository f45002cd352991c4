"""CIBA ping mode (§10.2): tell a client that its request was answered.

The issuer POSTs ``{"auth_req_id": …}`` to the client's registered
``backchannel_client_notification_endpoint`` with its ``client_notification_token`` as
the bearer token; the client then redeems the id at the token endpoint. A ping runs as a
task of the event loop, never on the approval page's path: each attempt has
:data:`TIMEOUT` in all (connecting, sending and the reply's head: a reply that drips
cannot hold a ping longer), at most :data:`ATTEMPTS` are made (a 2xx answer ends them),
and at most :data:`MAX_IN_FLIGHT` pings are under way at once (past that a ping is
dropped and logged: the client still gets its answer by polling). Only the reply's
status counts: its body is never read, whatever its size. Redirects are not followed.

The endpoint is a URL a client makes the server call, so it passes
:func:`issuer.oauth.fetch.check_destination` before every ping, as at registration: https
to public addresses only (plain http to a loopback name excepted, for development), so
that a name that resolves elsewhere since cannot turn a ping into a request into the
private network; the ping's attempts go to the address checked, not to the name
resolved again (:class:`issuer.oauth.fetch.Destination`).
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from issuer.oauth.errors import OAuthError
from issuer.oauth.fetch import PUBLIC, Destination, Reach, check_destination, first_answer

log = logging.getLogger("tessera.oauth")

TIMEOUT = 5.0  # seconds for one attempt, all of it
ATTEMPTS = 3
BACKOFF = 1.0  # seconds before the second attempt, doubled for each later one
MAX_IN_FLIGHT = 256


class Notifier:
    """Sends pings in the background of the running event loop."""

    def __init__(
        self,
        timeout: float = TIMEOUT,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        reach: Reach = PUBLIC,
    ) -> None:
        self.reach = reach  # the endpoints a client may make the server call
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._tasks: set[asyncio.Task[bool]] = set()

    def notify(self, endpoint: str, token: str, auth_req_id: str) -> bool:
        """Start a ping (from the event loop's thread); False when too many are under way."""
        if len(self._tasks) >= MAX_IN_FLIGHT:
            log.warning("ping to %s dropped: %d pings under way", endpoint, len(self._tasks))
            return False
        task = asyncio.get_running_loop().create_task(self.send(endpoint, token, auth_req_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def send(self, endpoint: str, token: str, auth_req_id: str) -> bool:
        """One ping, retried; whether the client took it (a 2xx answer)."""
        try:
            to = await asyncio.to_thread(check_destination, endpoint, _refused, self.reach)
        except OAuthError as exc:
            log.warning("ping not sent: %s", exc.description)
            return False
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(**to.client(self.timeout)) as http:
            for attempt in range(self.attempts):
                if attempt:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                status = await self._attempt(http, endpoint, to, headers, auth_req_id)
                if status is not None and 200 <= status < 300:
                    return True
                if status is not None:
                    log.info("ping to %s answered %d", endpoint, status)
        log.warning("ping to %s gave up after %d attempts", endpoint, self.attempts)
        return False

    async def _attempt(
        self,
        http: httpx.AsyncClient,
        endpoint: str,
        to: Destination,
        headers: dict[str, str],
        auth_req_id: str,
    ) -> int | None:
        """One POST to ``endpoint`` (sent ``to`` its checked address) within
        :attr:`timeout` in all: the reply's status (its body is left unread and the
        connection closed), or None when it failed or took too long."""
        body = {"auth_req_id": auth_req_id}
        try:
            return await first_answer(http, to, "POST", self.timeout, _status, headers, json=body)
        except (httpx.HTTPError, TimeoutError) as exc:
            log.info("ping to %s failed: %s", endpoint, exc or "took too long")
            return None

    async def drain(self) -> None:
        """Wait for the pings under way (tests; a stopping server)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _status(answer: httpx.Response) -> int:
    return answer.status_code


def _refused(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)
