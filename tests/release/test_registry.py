"""The registry on SQLite and PostgreSQL: versions, idempotent registration, aliases with CAS, audit."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from release import registry
from release.db import make_engine, session_scope
from schemas.errors import AliasConflict, InvalidTransition, NotFound, PermanentError, Reason
from schemas.states import VersionState


def _register(engine: Engine, model: str = "digits", version: str = "1", digest: str = "sha256:aa"):
    with session_scope(engine) as s:
        return registry.register_version(s, model=model, version=version, digest=digest,
                                         artifact_uri=f"file:///b/models/{model}/{version}/", format="torchscript",
                                         manifest={"name": model}, metrics={"accuracy": 0.9})


def test_register_then_lookup_by_name_id_and_alias(engine: Engine) -> None:
    """A registered version is found by name+version, by id and through an alias."""
    outcome = _register(engine)
    assert outcome.created
    with session_scope(engine) as s:
        assert registry.get_version(s, "digits", "1").digest == "sha256:aa"
        assert registry.get_version_by_id(s, outcome.version.id).version == "1"
        registry.move_alias(s, model="digits", alias="PROD", version="1", expected_revision=0, actor="t", reason="r")
    with session_scope(engine) as s:
        assert registry.resolve(s, "digits", "PROD").version == "1"
        assert registry.get_alias(s, "digits", "PROD").revision == 1


def test_same_digest_is_a_noop_other_digest_conflicts(engine: Engine) -> None:
    """Re-registering the same content is a no-op; the same version with other content is a conflict."""
    first = _register(engine)
    again = _register(engine)
    assert not again.created and again.version.id == first.version.id
    with pytest.raises(PermanentError) as err:
        _register(engine, digest="sha256:bb")
    assert err.value.reason is Reason.VERSION_CONFLICT
    with session_scope(engine) as s:
        assert len(registry.list_versions(s, "digits")) == 1


def test_transitions_follow_the_state_machine(engine: Engine) -> None:
    """Only edges of the state machine are taken, and each bumps the revision."""
    _register(engine)
    with session_scope(engine) as s:
        view, before = registry.transition(s, model="digits", version="1", to=VersionState.DEPLOYING)
        assert before is VersionState.REGISTERED and view.revision == 1
    with session_scope(engine) as s, pytest.raises(InvalidTransition):
        registry.transition(s, model="digits", version="1", to=VersionState.LIVE)
    with session_scope(engine) as s, pytest.raises(InvalidTransition):
        registry.transition(s, model="digits", version="1", to=VersionState.STAGED, expect=VersionState.REGISTERED)


def test_concurrent_alias_moves_exactly_one_wins(db: tuple[Engine, str]) -> None:
    """Two movers with the same expected revision, in two connections at once: one wins, one conflicts."""
    engine, url = db
    _register(engine, version="1")
    _register(engine, version="2")
    with session_scope(engine) as s:
        registry.move_alias(s, model="digits", alias="PROD", version="1", expected_revision=0, actor="t", reason="")
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def mover(target: str) -> None:
        own = make_engine(url)
        try:
            with session_scope(own) as s:
                seen = registry.get_alias(s, "digits", "PROD").revision
            barrier.wait(timeout=10)  # both promoters decided on revision 1 before either moves
            with session_scope(own) as s:
                registry.move_alias(s, model="digits", alias="PROD", version=target, expected_revision=seen,
                                    actor=f"p{target}", reason="race")
            results[target] = "won"
        except Exception as exc:
            results[target] = exc
        finally:
            own.dispose()

    threads = [threading.Thread(target=mover, args=(v,)) for v in ("1", "2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    wins = [k for k, v in results.items() if v == "won"]
    assert len(wins) == 1, results
    loser = next(v for v in results.values() if v != "won")
    assert isinstance(loser, AliasConflict), results
    assert "revision 2, not 1" in str(loser)
    with session_scope(engine) as s:
        alias = registry.get_alias(s, "digits", "PROD")
        assert alias.revision == 2 and alias.version == wins[0]


def test_alias_conflict_error_says_what_to_do(engine: Engine) -> None:
    """A stale expected revision raises AliasConflict with both revisions and a hint."""
    _register(engine)
    with session_scope(engine) as s:
        registry.move_alias(s, model="digits", alias="PROD", version="1", expected_revision=0, actor="a", reason="")
    with session_scope(engine) as s, pytest.raises(AliasConflict) as err:
        registry.move_alias(s, model="digits", alias="PROD", version="1", expected_revision=0, actor="b", reason="")
    assert err.value.reason is Reason.ALIAS_CONFLICT
    assert err.value.details == {"expected_revision": 0, "revision": 1}
    assert "release aliases" in err.value.hint


def test_audit_log_records_actor_reason_and_from_to(engine: Engine) -> None:
    """Every alias move is audited with who, why, and from which version to which."""
    _register(engine, version="1")
    _register(engine, version="2")
    with session_scope(engine) as s:
        registry.move_alias(s, model="digits", alias="PROD", version="1", expected_revision=0, actor="ana",
                            reason="first")
        registry.move_alias(s, model="digits", alias="PROD", version="2", expected_revision=1, actor="bo",
                            reason="better")
    with session_scope(engine) as s:
        moves = [e for e in registry.audit_log(s, model="digits") if e.action == "alias.moved"]
    assert [(e.actor, e.from_version, e.to_version, e.reason) for e in moves] == [
        ("ana", None, "1", "first"), ("bo", "1", "2", "better")]


def test_unknown_names_raise_not_found_with_reason(engine: Engine) -> None:
    """Looking up what does not exist raises NotFound with the right reason code."""
    with session_scope(engine) as s, pytest.raises(NotFound) as err:
        registry.get_version(s, "nope", "1")
    assert err.value.reason is Reason.MODEL_NOT_FOUND
    _register(engine)
    with session_scope(engine) as s, pytest.raises(NotFound) as err:
        registry.resolve(s, "digits", "STG")
    assert err.value.reason is Reason.VERSION_NOT_FOUND


def test_list_and_search_page_through_versions(engine: Engine) -> None:
    """Versions list in registration order with paging, and search matches model or version text."""
    for i in range(1, 8):
        _register(engine, model="alpha" if i % 2 else "beta", version=f"v{i}", digest=f"sha256:{i}")
    with session_scope(engine) as s:
        assert [v.version for v in registry.list_versions(s, "alpha", limit=2, offset=1)] == ["v3", "v5"]
        assert [v.version for v in registry.list_versions(s, "alpha", newest_first=True, limit=1)] == ["v7"]
        assert {v.model for v in registry.search_versions(s, text="bet")} == {"beta"}
        summary = {m.name: m for m in registry.list_models(s)}
        assert summary["alpha"].versions == 4 and summary["alpha"].latest == "v7"


def test_migrations_create_exactly_the_declared_tables(engine: Engine) -> None:
    """The Alembic head and the SQLModel tables never diverge."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
