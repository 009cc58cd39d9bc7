"""Node modes in the store: maintenance and disabled are kept apart from being online."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlite_utils

from gamepipeline.server.errors import NotFound
from gamepipeline.server.store import NodeMode, Store

from .test_store import new_pipeline


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store.db")
    store.register_node(
        "n1",
        hostname="h",
        labels={},
        capacity=2,
        agent_version="t",
        protocol_version=1,
    )
    return store


def test_a_registered_node_is_active(store: Store) -> None:
    assert store.get_node("n1").mode is NodeMode.ACTIVE
    assert store.closed_nodes() == {}


def test_maintenance_closes_the_node_and_survives_its_agent_reconnecting(
    store: Store,
) -> None:
    store.set_node_mode("n1", NodeMode.MAINTENANCE)
    store.register_node(
        "n1",
        hostname="h",
        labels={},
        capacity=2,
        agent_version="t",
        protocol_version=1,
    )

    assert store.get_node("n1").mode is NodeMode.MAINTENANCE
    assert store.closed_nodes() == {"n1": NodeMode.MAINTENANCE}


def test_enable_puts_a_disabled_node_back_in_service(store: Store) -> None:
    store.set_node_mode("n1", NodeMode.DISABLED)
    store.set_node_mode("n1", NodeMode.ACTIVE)

    assert store.closed_nodes() == {}


def test_an_unknown_node_cannot_change_mode_and_the_error_names_it(
    store: Store,
) -> None:
    with pytest.raises(NotFound, match="node 'ghost' does not exist"):
        store.set_node_mode("ghost", NodeMode.MAINTENANCE)


def test_active_on_node_lists_only_its_unfinished_pipelines(store: Store) -> None:
    first = store.create_pipeline(new_pipeline())
    second = store.create_pipeline(new_pipeline())
    store.create_pipeline(new_pipeline())  # never assigned
    assert store.assign(first, "n1") and store.assign(second, "n1")
    store.cancel(second)

    assert store.active_on_node("n1") == [first]


def test_a_database_from_before_node_modes_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Store(path).close()
    old = sqlite_utils.Database(path)
    # Databases of that release had neither the column nor its index.
    old.execute("DROP INDEX idx_nodes_mode")
    old.execute("ALTER TABLE nodes DROP COLUMN mode")
    old["nodes"].insert({"node_id": "n0", "hostname": "h", "online": 0})
    old.close()

    store = Store(path)

    assert store.get_node("n0").mode is NodeMode.ACTIVE


def test_counts_for_metrics_follow_state_and_template(store: Store) -> None:
    first = store.create_pipeline(new_pipeline())
    store.create_pipeline(new_pipeline())
    store.cancel(first)

    assert store.count_by_state_and_template() == {
        ("canceled", "game"): 1,
        ("pending", "game"): 1,
    }
    assert store.queue_depth() == 1
