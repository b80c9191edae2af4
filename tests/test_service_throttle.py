"""Login throttling: concurrent guesses, two central processes, unknown users, unlock."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

from service import dashboard, throttle
from service.context import AppContext
from service.objects_fs import ObjectStore
from service.store import Store
from tests import test_service_api as _api
from tests.test_service_api import PASSWORD
from tests.test_service_fleet import login_as

# fixtures shared with test_service_api (SQLite and a real PostgreSQL)
client = _api.client
clock = _api.clock
db_url = _api.db_url
postgres_server = _api.postgres_server
settings = _api.settings
store = _api.store


def _ctx(settings, store, **overrides) -> AppContext:
    s = dataclasses.replace(settings, **overrides)
    return AppContext(settings=s, store=store, objects=ObjectStore(s.objects_dir), clock=store._clock)


def test_concurrent_guesses_cannot_outrun_the_lockout(settings, store):
    ctx = _ctx(settings, store, login_lockout_after=5)
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda i: dashboard._attempt_login(ctx, "admin", f"guess {i}", "10.0.0.9"), range(10)))
    errors = sorted(r[1] for r in results)
    assert errors.count("wrong user name or password") == 5
    assert all("locked" in e for e in errors if e != "wrong user name or password")
    ok, error, _ = dashboard._attempt_login(ctx, "admin", PASSWORD, "10.0.0.9")
    assert not ok and "locked" in error  # even the right password, until an admin unlocks
    assert throttle.locked_users(store) == {"admin"}
    assert throttle.unlock(store, "admin")
    assert dashboard._attempt_login(ctx, "admin", PASSWORD, "10.0.0.9")[0]


def test_concurrent_attempts_are_counted_atomically(settings, store):
    with ThreadPoolExecutor(10) as pool:
        seen = list(pool.map(lambda _: throttle.record_attempt(store, "user:x", 900.0), range(20)))
    # every attempt sees a distinct count of the failures before it
    assert sorted(a.previous_failures for a in seen) == list(range(20))


def test_two_central_processes_share_the_counts(settings, store, clock):
    other = Store(settings.database_url, clock=clock)  # a second process on the same database
    try:
        a = _ctx(settings, store, login_lockout_after=4)
        b = _ctx(settings, other, login_lockout_after=4)
        seen = [dashboard._attempt_login(ctx, "admin", "nope", "10.0.0.1")[2] for ctx in (a, b, a, b)]
        assert seen == [0, 1, 2, 3]
        assert "locked" in dashboard._attempt_login(b, "admin", PASSWORD, "10.0.0.1")[1]
    finally:
        other.close()


def test_unknown_users_are_throttled_exactly_like_real_ones(settings, store):
    ctx = _ctx(settings, store, login_lockout_after=3)
    real = [dashboard._attempt_login(ctx, "admin", "nope", "10.0.0.2")[1:] for _ in range(5)]
    ghost = [dashboard._attempt_login(ctx, "nobody", "nope", "10.0.0.3")[1:] for _ in range(5)]
    assert real == ghost


def test_one_client_address_is_limited_across_accounts_until_its_window_ends(settings, store, clock):
    ctx = _ctx(settings, store, login_address_limit=3, login_lockout_after=100)
    for name in ("u1", "u2", "u3"):
        assert dashboard._attempt_login(ctx, name, "nope", "10.0.0.4")[1] == "wrong user name or password"
    assert "this address" in dashboard._attempt_login(ctx, "admin", PASSWORD, "10.0.0.4")[1]
    assert dashboard._attempt_login(ctx, "admin", PASSWORD, "10.0.0.5")[0]  # other address
    clock.now += settings.login_window_s + 1
    assert dashboard._attempt_login(ctx, "admin", PASSWORD, "10.0.0.4")[0]  # lapsed


def test_locked_account_is_shown_and_unlocked_on_the_users_page(client, store, settings, monkeypatch):
    async def no_sleep(_seconds: float) -> None:
        return None

    monkeypatch.setattr(dashboard, "_sleep", no_sleep)
    ctx = _ctx(settings, store, login_lockout_after=2)
    store.set_user("otto", "operator-password", "operator")
    for _ in range(3):
        dashboard._attempt_login(ctx, "otto", "nope", "10.0.0.6")
    csrf = login_as(client, "admin", PASSWORD)
    page = client.get("/users").text
    assert "locked" in page.split('data-user="otto"')[1].split("</tr>")[0]
    r = client.post("/users/otto/unlock", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and throttle.locked_users(store) == set()
