"""sandbox/web/auth.py and roles.py: users, roles per profile pattern, `may`, passwords, sessions,
tokens and the login rate limit, against a real state DB."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from sandbox.errors import NotFound, SandboxError
from sandbox.state import StateDB
from sandbox.web.auth import Auth, AuthError, Limits, RateLimited, UserExists
from sandbox.web.roles import ACTIONS, ROLES, AccessError, User, may, own_env_name, parse_grant

PW = "correct horse battery"
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # the tests' hashes: fast


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(tmp_path: Path, clock: Clock) -> Auth:
    return Auth(StateDB(tmp_path / "state.db"), hasher=CHEAP, clock=clock)


def rows(auth: Auth, table: str) -> list[sqlite3.Row]:
    with auth.state.transaction(write=False) as c:
        return c.execute(f"SELECT * FROM {table}").fetchall()


# -- roles and may ---------------------------------------------------------------------------------


def test_the_role_on_a_profile_is_the_highest_matching_grant() -> None:
    u = User("alice", (("*", "viewer"), ("dev*", "developer"), ("staging", "deployer")))
    assert u.role_for("prod") == "viewer"
    assert u.role_for("dev") == "developer" and u.role_for("devbox") == "developer"
    assert u.role_for("staging") == "deployer"
    assert User("bob", (("staging", "viewer"),)).role_for("prod") is None


EVERY = {"viewer": set(), "developer": set(), "deployer": set(), "admin": set()}
for _action, _least in ACTIONS.items():
    for _role in ROLES[ROLES.index(_least) :]:
        EVERY[_role].add(_action)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_action_by_every_role(role: str, action: str) -> None:
    u = User("alice", (("*", role),))
    assert may(u, action, "prod", owner="alice") is (action in EVERY[role])


def test_a_developer_may_deploy_staging_but_not_promote_prod() -> None:
    dev = User("dan", (("*", "viewer"), ("staging", "developer"), ("dev", "developer")))
    assert may(dev, "deploy_staging", "staging") and may(dev, "verify", "staging")
    assert not may(dev, "promote_prod", "prod") and not may(dev, "rollback", "prod")
    assert not may(dev, "deploy_staging", "prod")
    assert not may(dev, "maintenance", "staging")
    assert may(dev, "view", "prod")


def test_own_actions_need_the_owner_unless_deployer() -> None:
    dev = User("dan", (("dev", "developer"),))
    assert may(dev, "up_dev_own", "dev", owner="dan")
    assert not may(dev, "up_dev_own", "dev", owner="eve") and not may(dev, "down_own", "dev")
    boss = User("boss", (("dev", "deployer"),))
    assert may(boss, "down_own", "dev", owner="dan")
    assert own_env_name(dev) == "dev-dan"


def test_no_grant_means_nothing_not_even_view() -> None:
    u = User("nobody")
    assert not any(may(u, a, "staging", owner="nobody") for a in ACTIONS)


def test_admin_needs_admin_on_every_profile() -> None:
    assert may(User("a", (("*", "admin"),)), "admin", "prod")
    assert not may(User("a", (("prod", "admin"),)), "admin", "prod")
    assert may(User("a", (("prod", "admin"),)), "promote_prod", "prod")


@pytest.mark.parametrize("action", ["", "sudo", "VIEW", None, 3])
def test_an_unknown_action_is_an_error_never_a_yes(action: object) -> None:
    with pytest.raises(AccessError, match="unknown action"):
        may(User("a", (("*", "admin"),)), action, "prod")  # type: ignore[arg-type]


@pytest.mark.parametrize("profile", ["", "Prod", "../prod", "prod;rm", "staging-1", "*"])
def test_a_malformed_profile_is_an_error(profile: str) -> None:
    with pytest.raises(AccessError, match="invalid profile"):
        may(User("a", (("*", "admin"),)), "view", profile)


@pytest.mark.parametrize(
    ("text", "words"),
    [("staging", "PATTERN=ROLE"), ("*=root", "invalid role"), ("../x=viewer", "invalid profile pattern")],
)
def test_bad_grants_are_refused(text: str, words: str) -> None:
    with pytest.raises(AccessError) as e:
        parse_grant(text)
    assert words in e.value.message or words in str(e.value.hint)
    assert parse_grant("dev*=developer") == ("dev*", "developer")


# -- users -----------------------------------------------------------------------------------------


def test_users_are_added_listed_and_removed(auth: Auth) -> None:
    u = auth.add_user("alice", PW, {"*": "viewer", "staging": "deployer"})
    assert u.roles == (("*", "viewer"), ("staging", "deployer"))
    assert [x.name for x in auth.users()] == ["alice"]
    assert rows(auth, "users")[0]["hash"].startswith("$argon2id$")
    assert PW not in str([dict(r) for r in rows(auth, "users")])
    with pytest.raises(UserExists):
        auth.add_user("alice", PW)
    auth.remove_user("alice")
    assert auth.users() == [] and rows(auth, "user_roles") == []
    with pytest.raises(NotFound, match="alice"):
        auth.remove_user("alice")


@pytest.mark.parametrize(
    ("name", "password", "roles", "words"),
    [
        ("Alice", PW, {}, "invalid user name"),
        ("al-ice", PW, {}, "invalid user name"),
        ("a" * 21, PW, {}, "invalid user name"),
        ("../x", PW, {}, "invalid user name"),
        ("alice", "short", {}, "12 to 1024"),
        ("alice", "x" * 2000, {}, "12 to 1024"),
        ("alice", "a long pass\nword", {}, "line breaks"),
        ("alice", PW, {"*": "god"}, "invalid role"),
        ("alice", PW, {"st/aging": "viewer"}, "invalid profile pattern"),
    ],
)
def test_a_bad_user_changes_nothing(
    auth: Auth, name: str, password: str, roles: dict[str, str], words: str
) -> None:
    with pytest.raises(SandboxError, match=words):
        auth.add_user(name, password, roles)
    assert rows(auth, "users") == [] and rows(auth, "user_roles") == []


def test_roles_are_granted_replaced_and_taken(auth: Auth) -> None:
    auth.add_user("bob", PW, {"*": "viewer"})
    assert auth.set_role("bob", "staging", "developer").roles == (("*", "viewer"), ("staging", "developer"))
    assert auth.set_role("bob", "staging", "deployer").role_for("staging") == "deployer"
    assert auth.set_role("bob", "staging", None).roles == (("*", "viewer"),)
    with pytest.raises(AccessError):
        auth.set_role("bob", "staging", "owner")
    assert auth.get_user("bob").roles == (("*", "viewer"),)


# -- login, sessions -------------------------------------------------------------------------------


def test_login_gives_a_session_that_names_the_user(auth: Auth) -> None:
    auth.add_user("alice", PW, {"*": "viewer"})
    sid, user = auth.login("alice", PW, "127.0.0.1")
    assert user.name == "alice" and auth.session_user(sid).name == "alice"
    stored = rows(auth, "sessions")[0]
    assert sid.split(".")[1] not in str(dict(stored))  # only the verifier's hash is kept


def test_wrong_password_and_unknown_user_read_the_same(auth: Auth) -> None:
    auth.add_user("alice", PW)
    with pytest.raises(AuthError) as a:
        auth.login("alice", "wrong password!", "127.0.0.1")
    with pytest.raises(AuthError) as b:
        auth.login("mallory", PW, "127.0.0.1")
    assert a.value.message == b.value.message == "wrong user name or password"
    assert rows(auth, "sessions") == []


def test_a_password_longer_than_allowed_never_matches_its_prefix(auth: Auth) -> None:
    longest = "p" * 1024
    auth.add_user("alice", longest)
    with pytest.raises(AuthError):
        auth.login("alice", longest + "x", "127.0.0.1")
    auth.login("alice", longest, "127.0.0.1")


@pytest.mark.parametrize(
    "sid", ["", "x", "0" * 18 + "." + "a" * 43, "not a session id at all", "../../etc/passwd", None]
)
def test_a_malformed_or_unknown_session_is_refused(auth: Auth, sid: str) -> None:
    with pytest.raises(AuthError, match="session unknown"):
        auth.session_user(sid)


def test_a_session_with_a_wrong_verifier_is_refused(auth: Auth) -> None:
    auth.add_user("alice", PW)
    sid, _ = auth.login("alice", PW, "127.0.0.1")
    selector, verifier = sid.split(".")
    forged = selector + "." + ("A" if verifier[0] != "A" else "B") + verifier[1:]
    with pytest.raises(AuthError):
        auth.session_user(forged)
    assert auth.session_user(sid).name == "alice"


def test_sessions_expire_when_idle_and_absolutely(tmp_path: Path, clock: Clock) -> None:
    auth = Auth(StateDB(tmp_path / "s.db"), hasher=CHEAP, clock=clock, limits=Limits(600, 100))
    auth.add_user("alice", PW)
    sid, _ = auth.login("alice", PW, "127.0.0.1")
    for _ in range(5):  # kept alive by use, 90 s apart ...
        clock.t += 90
        auth.session_user(sid)
    clock.t += 200  # ... until the absolute lifetime of 600 s ends
    with pytest.raises(AuthError):
        auth.session_user(sid)
    assert rows(auth, "sessions") == []  # and the row is gone
    sid, _ = auth.login("alice", PW, "127.0.0.1")
    clock.t += 101  # idle too long
    with pytest.raises(AuthError):
        auth.session_user(sid)


def test_logout_revokes_one_session(auth: Auth) -> None:
    auth.add_user("alice", PW)
    a, _ = auth.login("alice", PW, "127.0.0.1")
    b, _ = auth.login("alice", PW, "::1")
    assert auth.logout(a) and not auth.logout(a) and not auth.logout("junk")
    with pytest.raises(AuthError):
        auth.session_user(a)
    assert auth.session_user(b).name == "alice"


def test_a_password_change_revokes_every_session(auth: Auth) -> None:
    auth.add_user("alice", PW)
    sids = [auth.login("alice", PW, "127.0.0.1")[0] for _ in range(3)]
    assert auth.set_password("alice", "another good passphrase") == 3
    for sid in sids:
        with pytest.raises(AuthError):
            auth.session_user(sid)
    with pytest.raises(AuthError):
        auth.login("alice", PW, "127.0.0.1")
    auth.login("alice", "another good passphrase", "127.0.0.1")


def test_removing_a_user_revokes_sessions_and_tokens(auth: Auth) -> None:
    auth.add_user("alice", PW)
    sid, _ = auth.login("alice", PW, "127.0.0.1")
    token = auth.add_token("alice", "ci")
    auth.remove_user("alice")
    with pytest.raises(AuthError):
        auth.session_user(sid)
    with pytest.raises(AuthError):
        auth.token_user(token)
    assert rows(auth, "sessions") == [] and rows(auth, "tokens") == []


def test_a_hash_made_with_old_parameters_is_rehashed_at_login(tmp_path: Path, clock: Clock) -> None:
    state = StateDB(tmp_path / "s.db")
    Auth(state, hasher=CHEAP, clock=clock).add_user("alice", PW)
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    Auth(state, hasher=stronger, clock=clock).login("alice", PW, "127.0.0.1")
    with state.transaction(write=False) as c:
        assert "t=2" in c.execute("SELECT hash FROM users").fetchone()[0]


# -- rate limit ------------------------------------------------------------------------------------


def test_failed_logins_are_limited_per_user_even_with_the_right_password(auth: Auth, clock: Clock) -> None:
    auth.add_user("alice", PW)
    for i in range(5):
        with pytest.raises(AuthError):
            auth.login("alice", f"wrong password {i}", f"10.0.0.{i}")
    with pytest.raises(RateLimited) as e:
        auth.login("alice", PW, "10.0.0.9")
    assert "this user" in e.value.message and 0 < e.value.retry_after <= 900
    clock.t += 901
    auth.login("alice", PW, "10.0.0.9")


def test_failed_logins_are_limited_per_source_address(auth: Auth) -> None:
    auth.add_user("alice", PW)
    for i in range(20):
        with pytest.raises(AuthError):
            auth.login(f"user{i}", PW, "192.0.2.7")
    with pytest.raises(RateLimited, match="this address"):
        auth.login("alice", PW, "192.0.2.7")
    auth.login("alice", PW, "192.0.2.8")


def test_the_limit_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "s.db"
    Auth(StateDB(path), hasher=CHEAP, clock=clock).add_user("alice", PW)
    for _ in range(5):
        with pytest.raises(AuthError):
            Auth(StateDB(path), hasher=CHEAP, clock=clock).login("alice", "nope nope nope", "127.0.0.1")
    with pytest.raises(RateLimited):
        Auth(StateDB(path), hasher=CHEAP, clock=clock).login("alice", PW, "127.0.0.1")


def test_a_good_login_resets_the_users_count(auth: Auth) -> None:
    auth.add_user("alice", PW)
    for _ in range(4):
        with pytest.raises(AuthError):
            auth.login("alice", "nope nope nope", "127.0.0.1")
    auth.login("alice", PW, "127.0.0.1")
    for _ in range(4):
        with pytest.raises(AuthError):
            auth.login("alice", "nope nope nope", "127.0.0.1")
    auth.login("alice", PW, "127.0.0.1")


@pytest.mark.parametrize("source", ["", "localhost", "1.2.3", "::g", None])
def test_a_bad_source_address_is_refused(auth: Auth, source: str) -> None:
    with pytest.raises(SandboxError, match="invalid source address"):
        auth.login("alice", PW, source)
    assert rows(auth, "login_failures") == []


# -- tokens ----------------------------------------------------------------------------------------


def test_a_token_is_shown_once_stored_hashed_and_records_its_last_use(auth: Auth, clock: Clock) -> None:
    auth.add_user("ci", PW, {"staging": "developer"})
    token = auth.add_token("ci", "github-actions")
    assert token.startswith("sbx_")
    assert token.split(".")[1] not in str([dict(r) for r in rows(auth, "tokens")])
    assert auth.tokens("ci")[0].last_used is None
    clock.t += 5
    assert auth.token_user(token).role_for("staging") == "developer"
    assert auth.tokens()[0].last_used == clock.t


def test_a_revoked_or_expired_token_is_refused(auth: Auth, clock: Clock) -> None:
    auth.add_user("ci", PW)
    token = auth.add_token("ci", "a")
    auth.remove_token("ci", "a")
    with pytest.raises(AuthError, match="token unknown"):
        auth.token_user(token)
    short = auth.add_token("ci", "b", ttl=60)
    auth.token_user(short)
    clock.t += 61
    with pytest.raises(AuthError):
        auth.token_user(short)


@pytest.mark.parametrize(
    ("user", "name", "ttl", "words"),
    [
        ("ci", "Bad Name", None, "invalid token name"),
        ("ci", "../x", None, "invalid token name"),
        ("ci", "t", -1, "invalid token lifetime"),
        ("ci", "t", "1d", "invalid token lifetime"),
        ("ghost", "t", None, "not found"),
    ],
)
def test_a_bad_token_request_changes_nothing(
    auth: Auth, user: str, name: str, ttl: object, words: str
) -> None:
    auth.add_user("ci", PW)
    with pytest.raises(SandboxError, match=words):
        auth.add_token(user, name, ttl)  # type: ignore[arg-type]
    assert rows(auth, "tokens") == []


def test_token_names_are_unique_per_user(auth: Auth) -> None:
    auth.add_user("ci", PW)
    auth.add_token("ci", "a")
    with pytest.raises(UserExists, match="already has a token"):
        auth.add_token("ci", "a")
    with pytest.raises(NotFound):
        auth.remove_token("ci", "b")


def test_a_version_4_state_db_gains_the_web_tables_and_keeps_its_envs(tmp_path: Path) -> None:
    from sandbox.state.rows import SCHEMA, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for script in (SCHEMA, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4):
        conn.executescript(script)
    conn.execute(
        "INSERT INTO envs (name, profile, image, backend, owner, state, health, created, updated)"
        " VALUES ('prod', 'prod', 'sha256:x', 'lxc', 'ops', 'running', 'ok', 1, 1)"
    )
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    state = StateDB(path)
    assert [e.name for e in state.list_envs()] == ["prod"]
    auth = Auth(state, hasher=CHEAP)
    auth.add_user("alice", PW, {"*": "viewer"})
    with state.transaction(write=False) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 7
