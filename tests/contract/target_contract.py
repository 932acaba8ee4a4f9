"""The contract every built-in target keeps, written once (as
``test_store.StoreContract`` is for the stores).

``TargetContract`` holds the cases; a test class per target mixes it in and
provides a ``remote`` fixture: a ``Remote``, the small adapter that knows that
target's simulator. The simulator is served over real sockets in a thread of
its own and the target is the real one with its real client (httpx, msal,
slack_sdk). Failures are injected, and what the remote shows is read back,
through the simulator's ``/_sim/`` control API, as a test in another process
would; the cases never reach into a simulator's Python objects.

The cases: apply, clear, idempotent re-apply, a rejected token (renewed
where the target can renew it), a rate limit with ``Retry-After``, 5xx, a
timeout, a person the remote does not know. Where a target legitimately
behaves otherwise, its ``Remote`` says so in a documented class attribute
(``renews_tokens``, ``rejected_token``, ``rate_limits``, ``knows_people``,
``failures``) and the case checks that behaviour instead.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import httpx
import pytest

from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.model import Applied, Person, Status
from presence_sync.targets.base import Target

RETRY_AFTER = 7
"""The ``Retry-After`` (seconds) the rate-limit case injects."""

TIMEOUT = 0.3
"""The request timeout (seconds) of a target built for the timeout case ..."""

HANG = 1.5
"""... and how long the remote then holds its answer."""


class Control:
    """A simulator's ``/_sim/`` control API (JSON in and out), over HTTP."""

    def __init__(self, origin: str, ca_file: str | None = None) -> None:
        verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.Client(base_url=origin + "/_sim", verify=verify, timeout=10)

    def get(self, route: str, **params: str) -> Any:
        response = self._http.get(route, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, route: str, **body: Any) -> Any:
        response = self._http.post(route, json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def close(self) -> None:
        self._http.close()


class Remote:
    """One target kind in front of its simulator: how to build the target,
    how to make the remote misbehave once, and what the remote shows.

    Subclasses set ``kind`` and ``status`` and implement every method that
    raises ``NotImplementedError``; the class attributes below document
    where a kind differs from the common case, and the contract checks the
    documented behaviour."""

    kind: ClassVar[str]
    status: ClassVar[Status]
    """What the cases apply (a status this kind shows)."""

    renews_tokens: ClassVar[bool] = True
    """True: a rejected token is renewed once and the request asked again,
    within the same ``apply`` (Microsoft's client credentials). False: there
    is no token to renew (Slack's tokens do not rotate, a webhook has a
    shared secret at most), so the rejection is raised at once as
    ``rejected_token``."""

    rejected_token: ClassVar[type[Exception]] = AuthError
    """What ``apply`` raises when the remote rejects our credentials and
    they cannot be renewed. ``AuthError`` pauses the target; a person's own
    token (``slack_dnd``) is ``PermanentError``: only that person is parked."""

    rate_limits: ClassVar[tuple[str, ...]] = ("429",)
    """How the remote says "too many requests": ``"429"``, HTTP 429 with
    ``Retry-After``; ``"200"``, Slack's ``ratelimited`` inside an HTTP 200
    without a header, after which the target waits ``default_wait``."""

    default_wait: ClassVar[float | None] = None
    """The pause after a rate limit that names no wait (the ``"200"`` kind)."""

    knows_people: ClassVar[bool] = True
    """True: the remote has a directory and a person missing from it is a
    ``PermanentError`` naming them. False: the remote takes whoever it is
    sent (a webhook receiver), so the change is delivered like any other."""

    failures: ClassVar[str | None] = None
    """None when the remote can be made to fail; else why not (the ``log``
    target has no remote side): the failure cases are then reported as
    skipped with this reason, not left out."""

    def target(self, *, timeout: float | None = None) -> Target:
        """A new target of this kind (closed at the end of the test);
        ``timeout``: its request timeout in seconds."""
        raise NotImplementedError

    @property
    def person(self) -> Person:
        """Someone the remote knows."""
        raise NotImplementedError

    @property
    def nobody(self) -> Person:
        """Someone it does not know."""
        return Person(key="nobody@example.com", email="nobody@example.com", extension="999")

    async def apply(
        self,
        target: Target,
        desired: Status | None,
        applied: Applied | None = None,
        person: Person | None = None,
    ) -> Applied:
        """``target.apply`` of one ``Change`` for ``person`` (default:
        ``self.person``), with a store-backed ``Memory`` kept per person."""
        raise NotImplementedError

    def shows(self) -> bool:
        """The remote shows ``status`` for ``person``, as they would see it."""
        raise NotImplementedError

    def cleared(self) -> bool:
        """Nothing of ours is left for ``person``."""
        raise NotImplementedError

    def requests(self) -> int:
        """Requests the remote has answered so far (control API excluded)."""
        raise NotImplementedError

    def tokens(self) -> int:
        """Tokens the remote has issued so far (only for ``renews_tokens``)."""
        raise NotImplementedError

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` requests with HTTP ``status``."""
        raise NotImplementedError

    def reject_token_next(self) -> None:
        """Answer the next request as the remote answers a token it does not
        accept (HTTP 401 or Slack's ``invalid_auth``)."""
        raise NotImplementedError

    def rate_limit_next(self, kind: str, count: int) -> None:
        """The next ``count`` requests are rate limited the ``kind`` way
        (see ``rate_limits``); the ``"429"`` kind with ``RETRY_AFTER``."""
        raise NotImplementedError

    def hang_next(self, seconds: float) -> None:
        """Hold the answer to the next request for ``seconds`` (real time)."""
        raise NotImplementedError

    async def later(self, seconds: float) -> None:
        """Move the shared injected clock (target's and simulator's)."""
        raise NotImplementedError


def _can_fail(remote: Remote) -> None:
    if remote.failures is not None:
        pytest.skip(f"{remote.kind}: {remote.failures}")


class TargetContract:
    """The cases every target runs. A subclass provides ``remote``."""

    @pytest.fixture
    def remote(self) -> Iterator[Remote] | AsyncIterator[Remote]:
        raise NotImplementedError

    async def _shown(self, remote: Remote, target: Target) -> Applied:
        """Warm up (token, person id): the status is applied and shows."""
        applied = await remote.apply(target, remote.status)
        assert remote.shows()
        return applied

    # --- what a person sees -----------------------------------------------------------

    async def test_apply_shows_the_status(self, remote: Remote) -> None:
        target = remote.target()
        applied = await remote.apply(target, remote.status)
        assert applied.status == remote.status
        assert remote.shows()
        assert not remote.cleared()

    async def test_clear_takes_it_back(self, remote: Remote) -> None:
        target = remote.target()
        applied = await remote.apply(target, remote.status)
        await remote.later(60)
        gone = await remote.apply(target, None, applied)
        assert gone.status is None
        assert remote.cleared()
        assert not remote.shows()

    async def test_reapplying_leaves_the_same_result(self, remote: Remote) -> None:
        target = remote.target()
        first = await remote.apply(target, remote.status)
        await remote.later(5)
        second = await remote.apply(target, remote.status, first)
        assert second.status == first.status
        assert remote.shows()
        # One clear takes back everything: the second apply added nothing beside it.
        await remote.later(60)
        await remote.apply(target, None, second)
        assert remote.cleared()

    # --- the remote says no -------------------------------------------------------------

    async def test_a_rejected_token_is_renewed_once_or_reported(self, remote: Remote) -> None:
        _can_fail(remote)
        target = remote.target()
        applied = await self._shown(remote, target)
        await remote.later(60)
        if remote.renews_tokens:
            issued = remote.tokens()
            remote.reject_token_next()
            gone = await remote.apply(target, None, applied)
            assert gone.status is None
            assert remote.tokens() == issued + 1
            assert remote.cleared()
        else:
            asked = remote.requests()
            remote.reject_token_next()
            with pytest.raises(remote.rejected_token) as caught:
                await remote.apply(target, None, applied)
            if remote.rejected_token is PermanentError:
                assert remote.person.email in str(caught.value)
            assert remote.requests() == asked + 1  # not asked again with the same token
            assert remote.shows()

    @pytest.mark.parametrize("kind", ["429", "200"])
    async def test_a_rate_limit_pauses_for_its_retry_after(self, remote: Remote, kind: str) -> None:
        _can_fail(remote)
        if kind not in remote.rate_limits:
            # Documented in ``Remote.rate_limits``: this remote has no such form.
            pytest.skip(f"{remote.kind} rate-limits only as {', '.join(remote.rate_limits)}")
        target = remote.target()
        applied = await self._shown(remote, target)
        asked = remote.requests()
        remote.rate_limit_next(kind, count=2)
        with pytest.raises(TransientError) as caught:
            await remote.apply(target, None, applied)
        if kind == "429":
            assert caught.value.retry_after == RETRY_AFTER
            assert caught.value.status == 429
        else:
            assert caught.value.retry_after == remote.default_wait
        # Asked once: the engine owns the wait, not a retry inside the client.
        assert remote.requests() == asked + 1
        assert remote.shows()

    @pytest.mark.parametrize("status", [500, 502, 503])
    async def test_5xx_is_transient_and_the_retry_works(self, remote: Remote, status: int) -> None:
        _can_fail(remote)
        target = remote.target()
        applied = await self._shown(remote, target)
        await remote.later(60)
        asked = remote.requests()
        remote.fail_next(status)
        with pytest.raises(TransientError) as caught:
            await remote.apply(target, None, applied)
        assert caught.value.status == status
        assert remote.requests() == asked + 1
        assert remote.shows()
        gone = await remote.apply(target, None, applied)
        assert gone.status is None
        assert remote.cleared()

    async def test_a_timeout_is_transient_and_the_retry_works(self, remote: Remote) -> None:
        _can_fail(remote)
        target = remote.target(timeout=TIMEOUT)
        applied = await self._shown(remote, target)
        await remote.later(60)
        remote.hang_next(HANG)
        where = r"127\.0\.0\.1:\d+\S*: no answer in time \(timeout\)"  # where and why
        with pytest.raises(TransientError, match=where) as caught:
            await remote.apply(target, None, applied)
        assert caught.value.status is None
        gone = await remote.apply(target, None, applied)
        assert gone.status is None
        assert remote.cleared()

    async def test_a_person_the_remote_does_not_know(self, remote: Remote) -> None:
        target = remote.target()
        if remote.knows_people:
            with pytest.raises(PermanentError, match=remote.nobody.email.replace(".", r"\.")):
                await remote.apply(target, remote.status, person=remote.nobody)
        else:
            applied = await remote.apply(target, remote.status, person=remote.nobody)
            assert applied.status == remote.status
