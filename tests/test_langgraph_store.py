"""The LangGraph store on the real service (`live_url`): LangGraph's own store behaviours, run on
InMemoryStore and StateMemoryStore alike, then what only the service's store does — where items
live, each put a delta with its node and run, the service filtering, batches — and real graphs
compiled with it, one at a time and two at once.

The behaviours are those LangGraph's test suite asks of its stores (libs/checkpoint/tests and
libs/checkpoint-postgres/tests of langchain-ai/langgraph), written again here. Sync calls run in
a worker thread: the service under test serves from this test's event loop.
"""

from __future__ import annotations

import asyncio
import operator
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypedDict

import httpx
import pytest
from helpers import serving
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchItem,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore
from langgraph.types import Send

from state_memory_client import StateMemoryClient, ValidationError
from state_memory_client.langgraph import StateMemoryStore

TENANT = "acme"


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real transport to the live service, noting each request's method and path."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)


@pytest.fixture(params=["InMemoryStore", "StateMemoryStore"])
async def store(request):
    """Each store in turn: LangGraph's reference, and the service's on a fresh database."""
    if request.param == "InMemoryStore":
        yield InMemoryStore()
        return
    async with serving(request.getfixturevalue("settings")) as url:
        with StateMemoryStore(url, TENANT) as service_store:
            yield service_store


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
async def service(live_url, transport):
    """The service's store, its requests carried by `transport`."""
    with StateMemoryStore(live_url, TENANT, transport=transport) as service_store:
        yield service_store


async def in_thread(behaviour: Callable[[BaseStore], Any], store: BaseStore) -> Any:
    return await asyncio.to_thread(behaviour, store)


def keys(items: list[Item]) -> set[str]:
    return {item.key for item in items}


def namespaces(items: list[Item]) -> set[tuple[str, ...]]:
    return {item.namespace for item in items}


# ---------------------------------------------------------------- LangGraph's store behaviours


def listing_by_prefix_suffix_depth_and_page(store: BaseStore) -> None:
    """Namespaces listed by prefix, suffix, both, "*" labels, depth, limit and offset."""
    spaces = [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
        ("users", "123"),
        ("users", "456", "settings"),
        ("admin", "users", "789"),
    ]
    for number, namespace in enumerate(spaces):
        store.put(namespace, f"id_{number}", {"data": f"value_{number:02d}"})

    under_ab = [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f")]
    assert store.list_namespaces(prefix=("a", "b")) == under_ab
    assert store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert store.list_namespaces(prefix=("a",), suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [("a", "b", "c"), ("a", "b", "d"), ("a", "b", "f")]
    assert store.list_namespaces(prefix=("a", "b"), limit=2) == under_ab[:2]
    assert store.list_namespaces(prefix=("a", "b"), offset=2) == under_ab[2:]
    assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(suffix=("*", "f")) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert store.list_namespaces(prefix=("nonexistent",)) == []
    assert store.list_namespaces(prefix=("users", "123")) == [("users", "123")]


def listing_with_wildcards(store: BaseStore) -> None:
    for number, namespace in enumerate(
        [
            ("users", "123"),
            ("users", "456"),
            ("users", "789", "settings"),
            ("admin", "users", "789"),
            ("guests", "123"),
            ("guests", "456", "preferences"),
        ]
    ):
        store.put(namespace, f"id_{number}", {"data": number})

    assert store.list_namespaces(prefix=("users", "*")) == [
        ("users", "123"),
        ("users", "456"),
        ("users", "789", "settings"),
    ]
    assert store.list_namespaces(suffix=("*", "preferences")) == [("guests", "456", "preferences")]
    assert store.list_namespaces(prefix=("*", "users"), suffix=("*", "settings")) == []


def listing_in_pages(store: BaseStore) -> None:
    for number in range(20):
        store.put(("namespace", f"sub_{number:02d}"), f"id_{number:02d}", {"data": number})

    for offset in (0, 5, 15):
        page = store.list_namespaces(prefix=("namespace",), limit=5, offset=offset)
        assert page == [("namespace", f"sub_{number:02d}") for number in range(offset, offset + 5)]


def listing_to_a_depth(store: BaseStore) -> None:
    for number, namespace in enumerate(
        [("a", "b", "c", "d"), ("a", "b", "c", "e"), ("a", "b", "f"), ("a", "g"), ("h", "i", "j", "k")]
    ):
        store.put(namespace, f"id_{number}", {"data": number})

    assert store.list_namespaces(max_depth=2) == [("a", "b"), ("a", "g"), ("h", "i")]


def listing_everything_and_nothing(store: BaseStore) -> None:
    assert store.list_namespaces() == []
    for namespace in [("e", "f", "g"), ("a", "b"), ("c", "d")]:
        store.put(namespace, "k", {"v": 1})
    assert store.list_namespaces() == [("a", "b"), ("c", "d"), ("e", "f", "g")]
    assert len(store.list_namespaces(limit=2)) == 2


def listing_by_whole_labels(store: BaseStore) -> None:
    """A prefix or suffix matches whole labels: "foo" is no prefix of "foobar", "alice" no suffix
    of "malice" nor of "alice\\n"; "*" stands for exactly one label."""
    for namespace in [
        ("foo",),
        ("foo", "child"),
        ("foobar",),
        ("foobar", "baz"),
        ("uid", "users", "alice"),
        ("uid", "users", "malice"),
        ("uid", "users", "alice\n"),
        ("uid", "a", "b", "alice"),
    ]:
        store.put(namespace, "k", {"v": 1})

    assert store.list_namespaces(prefix=["foo"], limit=100) == [("foo",), ("foo", "child")]
    assert store.list_namespaces(suffix=["alice"], limit=100) == [("uid", "a", "b", "alice"), ("uid", "users", "alice")]
    assert store.list_namespaces(prefix=["uid", "*", "alice"], limit=100) == [("uid", "users", "alice")]
    assert len(store.list_namespaces(prefix=["uid"], limit=100)) == 4
    assert store.list_namespaces(prefix=["uid", "users", "alice"]) == [("uid", "users", "alice")]


def refusing_bad_namespaces(store: BaseStore) -> None:
    """No empty namespace, empty label, label with a dot, or root label "langgraph" through put;
    "langgraph" deeper down, and through batch, is an ordinary label."""
    document = {"foo": "bar"}
    for bad in [(), ("the", "thing.about"), ("some", "fun", ""), ("langgraph", "foo")]:
        with pytest.raises(InvalidNamespaceError):
            store.put(bad, "foo", document)
    assert store.list_namespaces() == []

    for namespace in [("foo", "langgraph", "foo"), ("langgraph", "foo")]:
        store.batch([PutOp(namespace, "bar", document)])
        assert store.get(namespace, "bar").value == document
        assert store.search(namespace)[0].value == document
        store.delete(namespace, "bar")
        assert store.get(namespace, "bar") is None


def basic_operations(store: BaseStore) -> None:
    namespace = ("test", "documents")
    store.put(namespace, "doc1", {"title": "Test Document", "content": "Hello, World!"})
    first = store.get(namespace, "doc1")
    assert (first.namespace, first.key, first.value) == (
        namespace,
        "doc1",
        {"title": "Test Document", "content": "Hello, World!"},
    )
    assert first.created_at.tzinfo is not None and first.created_at <= first.updated_at

    store.put(namespace, "doc1", {"title": "Updated Document"})
    second = store.get(namespace, "doc1")
    assert second.value == {"title": "Updated Document"}
    assert second.updated_at > first.updated_at

    assert store.get(("test", "other_documents"), "doc1") is None
    store.delete(namespace, "doc1")
    assert store.get(namespace, "doc1") is None
    store.delete(namespace, "never-there")


def batches_of_every_kind(store: BaseStore) -> None:
    """One batch of gets, a put, a search and a listing: a result per op, in order."""
    store.put(("test", "foo"), "key1", {"data": "value1"})
    store.put(("test", "bar"), "key2", {"data": "value2"})

    first = store.batch(
        [
            GetOp(("test", "foo"), "key1"),
            PutOp(("test", "bar"), "key2", {"data": "value2"}),
            SearchOp(("test",), filter={"data": "value1"}, limit=10, offset=0),
            ListNamespacesOp(match_conditions=None, max_depth=None, limit=10, offset=0),
            GetOp(("test",), "key3"),
        ]
    )
    assert isinstance(first[0], Item) and first[0].key == "key1" and first[0].value == {"data": "value1"}
    assert first[1] is None
    assert [item.key for item in first[2]] == ["key1"] and isinstance(first[2][0], SearchItem)
    assert first[3] == [("test", "bar"), ("test", "foo")]
    assert first[4] is None

    second = store.batch(
        [
            SearchOp(("test",), filter=None, limit=5, offset=0),
            GetOp(("test", "bar"), "key2"),
            ListNamespacesOp(match_conditions=None, max_depth=None, limit=5, offset=0),
            PutOp(("test",), "key3", {"data": "value3"}),
            GetOp(("test", "foo"), "key1"),
        ]
    )
    assert keys(second[0]) == {"key1", "key2"}
    assert second[1].value == {"data": "value2"}
    assert {("test", "bar"), ("test", "foo")} <= set(second[2])  # InMemoryStore also lists ("test",), once read
    assert second[3] is None
    assert second[4].value == {"data": "value1"}
    assert store.get(("test",), "key3").value == {"data": "value3"}


def batched_gets_and_puts(store: BaseStore) -> None:
    results = store.batch(
        [
            PutOp(("test",), "key1", {"data": "value1"}),
            PutOp(("test",), "key2", {"data": "value2"}),
            PutOp(("test",), "key3", None),
        ]
    )
    assert results == [None, None, None]
    got = store.batch([GetOp(("test",), "key1"), GetOp(("test",), "key2"), GetOp(("test",), "key3")])
    assert [item and item.value for item in got] == [{"data": "value1"}, {"data": "value2"}, None]


def batched_searches_and_listings(store: BaseStore) -> None:
    for namespace, key, value in [
        (("test", "foo"), "key1", {"data": "value1", "tag": "a"}),
        (("test", "bar"), "key2", {"data": "value2", "tag": "a"}),
        (("test", "baz"), "key3", {"data": "value3", "tag": "b"}),
        (("test", "documents", "public"), "doc1", {"content": "public doc"}),
        (("prod", "documents", "public"), "doc3", {"content": "prod doc"}),
    ]:
        store.put(namespace, key, value)

    tagged, first_two, in_foo, everything, shallow, public = store.batch(
        [
            SearchOp(("test",), filter={"tag": "a"}, limit=10, offset=0),
            SearchOp(("test",), filter=None, limit=2, offset=0),
            SearchOp(("test", "foo"), filter=None, limit=10, offset=0),
            ListNamespacesOp(match_conditions=None, max_depth=None, limit=10, offset=0),
            ListNamespacesOp(match_conditions=None, max_depth=2, limit=10, offset=0),
            ListNamespacesOp(match_conditions=(MatchCondition("suffix", ("public",)),), max_depth=None, limit=10),
        ]
    )
    assert keys(tagged) == {"key1", "key2"}
    assert len(first_two) == 2
    assert [(item.namespace, item.key) for item in in_foo] == [(("test", "foo"), "key1")]
    assert len(everything) == 5
    assert shallow == [("prod", "documents"), ("test", "bar"), ("test", "baz"), ("test", "documents"), ("test", "foo")]
    assert public == [("prod", "documents", "public"), ("test", "documents", "public")]


def searching_by_namespace_filter_and_page(store: BaseStore) -> None:
    for namespace, key, value in [
        (("test", "docs"), "doc1", {"title": "First Doc", "author": "Alice", "tags": ["important"]}),
        (("test", "docs"), "doc2", {"title": "Second Doc", "author": "Bob", "tags": ["draft"]}),
        (("test", "images"), "img1", {"title": "Image 1", "author": "Alice", "tags": ["final"]}),
    ]:
        store.put(namespace, key, value)

    assert keys(store.search(("test",))) == {"doc1", "doc2", "img1"}
    assert namespaces(store.search(("test", "docs"))) == {("test", "docs")}
    assert keys(store.search(("test",), filter={"author": "Alice"})) == {"doc1", "img1"}
    assert len(store.search(("test",), limit=2)) == 2
    assert len(store.search(("test",), offset=2)) == 1
    assert keys(store.search(("test",), limit=2)) | keys(store.search(("test",), offset=2)) == {"doc1", "doc2", "img1"}


def searching_by_whole_labels(store: BaseStore) -> None:
    """A search prefix stops at label boundaries, takes "_" and "%" literally, and () is everything."""
    for namespace in [
        ("foo",),
        ("foo", "child"),
        ("foo", "child", "deep"),
        ("foobar",),
        ("foobar", "baz"),
        ("foo2",),
        ("user_1",),
        ("user_1", "child"),
        ("userX1",),
        ("a%b",),
        ("axxb",),
    ]:
        store.put(namespace, "k", {"v": 1})

    def found(prefix: tuple[str, ...]) -> set[tuple[str, ...]]:
        return namespaces(store.search(prefix, limit=100))

    assert found(("foo",)) == {("foo",), ("foo", "child"), ("foo", "child", "deep")}
    assert found(("foobar",)) == {("foobar",), ("foobar", "baz")}
    assert found(("foo", "child")) == {("foo", "child"), ("foo", "child", "deep")}
    assert found(("foo2",)) == {("foo2",)}
    assert found(("fo",)) == set()
    assert found(("user_1",)) == {("user_1",), ("user_1", "child")}
    assert found(("a%b",)) == {("a%b",)}
    assert len(found(())) == 11


def filtering_as_the_reference_does(store: BaseStore) -> None:
    """Filters by value, by comparison and by several fields at once; a query without an index
    is ignored."""
    for key, value in [
        ("doc1", {"text": "red apple", "color": "red", "score": 4.5}),
        ("doc2", {"text": "red car", "color": "red", "score": 3.0}),
        ("doc3", {"text": "green apple", "color": "green", "score": 4.0}),
        ("doc4", {"text": "blue car", "color": "blue", "score": 3.5}),
    ]:
        store.put(("test",), key, value)

    assert keys(store.search(("test",), query="apple", filter={"color": "red"})) == {"doc1", "doc2"}
    assert keys(store.search(("test",), filter={"score": {"$gt": 3.2}})) == {"doc1", "doc3", "doc4"}
    assert keys(store.search(("test",), filter={"score": {"$gte": 4.0}, "color": "green"})) == {"doc3"}
    assert keys(store.search(("test",), filter={"score": {"$lt": 4, "$gte": 3}})) == {"doc2", "doc4"}
    assert keys(store.search(("test",), filter={"score": {"$lte": 3.0}})) == {"doc2"}
    assert keys(store.search(("test",), filter={"color": {"$ne": "red"}})) == {"doc3", "doc4"}
    assert keys(store.search(("test",), filter={"color": {"$eq": "blue"}})) == {"doc4"}
    assert all(item.score is None for item in store.search(("test",), query="apple"))
    with pytest.raises(ValueError, match="Unsupported operator"):
        store.search(("test",), filter={"score": {"$near": 4}})


def filtering_nested_values(store: BaseStore) -> None:
    """Objects match field by field (others may exist), arrays by length and element, None also
    matches a missing field, and a value of another JSON type never equals."""
    for key, value in [
        ("a", {"meta": {"lang": "en", "tags": ["x", "y"], "level": 2}, "flag": True, "note": None}),
        ("b", {"meta": {"lang": "de", "tags": ["x"], "level": "2"}, "flag": False}),
        ("c", {"meta": ["en"], "flag": 1, "note": "set"}),
        ("d", {"meta": {"lang": "en", "tags": ["y", "x"]}, "quote": 'say "hi" \\ ünï'}),
    ]:
        store.put(("nested",), key, value)

    def matching(condition: dict[str, Any]) -> set[str]:
        return keys(store.search(("nested",), filter=condition))

    assert matching({"meta": {"lang": "en"}}) == {"a", "d"}
    assert matching({"meta": {"tags": ["x", "y"]}}) == {"a"}
    assert matching({"meta": {"tags": ["x"]}}) == {"b"}
    assert matching({"meta": {"level": 2}}) == {"a"}
    assert matching({"meta": {"level": "2"}}) == {"b"}
    assert matching({"meta": ["en"]}) == {"c"}
    assert matching({"meta": "en"}) == set()
    assert matching({"flag": False}) == {"b"}
    assert matching({"note": None}) == {"a", "b", "d"}
    assert matching({"note": {"$ne": None}}) == {"c"}
    assert matching({"note": {"$ne": "set"}}) == {"a", "b", "d"}
    assert matching({"quote": 'say "hi" \\ ünï'}) == {"d"}
    assert matching({"meta": {"lang": "en"}, "quote": {"$ne": "x"}}) == {"a", "d"}


def reading_before_writing_in_a_batch(store: BaseStore) -> None:
    """A batch's reads see the store as it was before the batch; of two puts to a key, the last wins."""
    store.put(("memo",), "k", {"v": 1})
    before, _, _, listed = store.batch(
        [
            GetOp(("memo",), "k"),
            PutOp(("memo",), "k", {"v": 2}),
            PutOp(("memo", "new"), "k", {"v": 3}),
            ListNamespacesOp(),
        ]
    )
    assert before.value == {"v": 1}
    assert listed == [("memo",)]
    store.batch([PutOp(("memo",), "k", {"v": 4}), PutOp(("memo",), "k", {"v": 5}), PutOp(("memo",), "j", {"v": 6})])
    assert store.get(("memo",), "k").value == {"v": 5}
    assert store.get(("memo", "new"), "k").value == {"v": 3}


def keeping_any_text(store: BaseStore) -> None:
    """Values, keys and labels in any script, with the characters ids, paths and slice specs
    use, come back exactly."""
    texts = ["这是中文", "これは日本語です", "이건 한국어야", "Это русский", "यह रूसी है"]
    for number, text in enumerate(texts):
        store.put(("user_123", "memories"), str(number), {"text": text})
    assert [store.get(("user_123", "memories"), str(number)).value["text"] for number in range(5)] == texts

    odd = ["a/b", "a:b", "50%", "*", "x?", "a,b", " spaced ", "back\\slash", "tab\there", "ä€😀", "%41", "\u200b"]
    for label in odd:
        store.put(("odd", label), label + ".key", {"label": label, "dollar": {"$set": 1, "$inc": {"n": 1}}})
    assert store.list_namespaces(prefix=("odd",)) == sorted(("odd", label) for label in odd)
    for label in odd:
        item = store.get(("odd", label), label + ".key")
        assert (item.namespace, item.key, item.value) == (
            ("odd", label),
            label + ".key",
            {"label": label, "dollar": {"$set": 1, "$inc": {"n": 1}}},
        )
        assert [found.key for found in store.search(("odd", label))] == [label + ".key"]
    assert keys(store.search(("odd",), filter={"label": "a,b"}, limit=50)) == {"a,b.key"}


BEHAVIOURS = [
    listing_by_prefix_suffix_depth_and_page,
    listing_with_wildcards,
    listing_in_pages,
    listing_to_a_depth,
    listing_everything_and_nothing,
    listing_by_whole_labels,
    refusing_bad_namespaces,
    basic_operations,
    batches_of_every_kind,
    batched_gets_and_puts,
    batched_searches_and_listings,
    searching_by_namespace_filter_and_page,
    searching_by_whole_labels,
    filtering_as_the_reference_does,
    filtering_nested_values,
    reading_before_writing_in_a_batch,
    keeping_any_text,
]


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=[behaviour.__name__ for behaviour in BEHAVIOURS])
async def test_the_store_behaves_as_langgraph_expects(store, behaviour):
    await in_thread(behaviour, store)


async def test_async_calls_behave_as_the_sync_ones(store):
    """aput/aget/asearch/adelete/alist_namespaces, and concurrent puts to one key: the last wins."""
    document = {"foo": "bar"}
    with pytest.raises(InvalidNamespaceError):
        await store.aput(("langgraph", "foo"), "bar", document)
    await store.aput(("foo", "langgraph", "foo"), "bar", document)
    assert (await store.aget(("foo", "langgraph", "foo"), "bar")).value == document
    assert (await store.asearch(("foo", "langgraph", "foo")))[0].value == document
    await store.adelete(("foo", "langgraph", "foo"), "bar")
    assert await store.aget(("foo", "langgraph", "foo"), "bar") is None

    await asyncio.gather(store.aput(("test",), "same", {"value": "same"}), store.aput(("test",), "other", {"value": 1}))
    same, again, other = await asyncio.gather(
        store.aget(("test",), "same"), store.aget(("test",), "same"), store.aget(("test",), "other")
    )
    assert same == again and same.value == {"value": "same"} and other.value == {"value": 1}
    await store.abatch([PutOp(("test",), "key", {"value": 1}), PutOp(("test",), "key", {"value": 2})])
    assert (await store.aget(("test",), "key")).value == {"value": 2}
    first, second = await asyncio.gather(
        store.asearch(("test",), filter={"value": 2}), store.asearch(("test",), filter={"value": 2})
    )
    assert first == second and [item.key for item in first] == ["key"]
    assert await store.alist_namespaces() == [("foo", "langgraph", "foo"), ("test",)]


# ---------------------------------------------------------------- the service's store


async def test_a_namespace_is_a_state_and_its_items_are_members_of_a_collection(service, live_url, conn):
    await service.aput(("users", "42", "memories"), "m1", {"topic": "coffee", "likes": 3})
    await service.aput(("users", "42", "memories"), "a.b c,d", {"topic": "tea"})
    await service.aput(("users/x", "re:set"), "50%", {"n": 1})

    async with StateMemoryClient(live_url) as sms:
        state = (await sms.get_state(TENANT, "langgraph:users:42:memories")).state
        assert list(state) == ["memories"]
        assert set(state["memories"]) == {"m1", "a%2Eb%20c%2Cd"}
        entry = state["memories"]["m1"]
        assert entry["value"] == {"topic": "coffee", "likes": 3}
        assert entry["created_at"] == entry["updated_at"] and datetime.fromisoformat(entry["created_at"]).tzinfo
        # other agents read the store's states with slices, as any state
        view = await sms.get_slice(
            TENANT, "langgraph:users:42:memories", "memories:*", where='@.value.topic == "coffee"'
        )
        assert list(view.slice["memories"]) == ["m1"]
        odd = await sms.get_state(TENANT, "langgraph:users%2Fx:re%3Aset")
        assert list(odd.state) == ["re%3Aset"] and list(odd.state["re%3Aset"]) == ["50%25"]
    listed = await conn.fetch("SELECT fsa_id FROM sms.states WHERE tenant_id = $1 ORDER BY fsa_id", TENANT)
    assert [row["fsa_id"] for row in listed] == ["langgraph:users%2Fx:re%3Aset", "langgraph:users:42:memories"]


async def test_a_put_keeps_created_at_and_moves_updated_at(service):
    await service.aput(("notes",), "n", {"v": 1})
    first = await service.aget(("notes",), "n")
    await service.aput(("notes",), "n", {"v": 2})
    second = await service.aget(("notes",), "n")
    assert second.value == {"v": 2}
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    await service.adelete(("notes",), "n")
    await service.aput(("notes",), "n", {"v": 3})
    assert (await service.aget(("notes",), "n")).created_at > second.updated_at  # a new item


async def test_search_finds_the_most_recently_updated_first_and_pages_through_namespaces(service):
    for number in range(6):
        await service.aput(("team", "a" if number % 2 else "b"), f"k{number}", {"n": number})
    await service.aput(("team", "b"), "k0", {"n": 0, "again": True})
    newest = [item.key for item in await service.asearch(("team",), limit=10)]
    assert newest == ["k0", "k5", "k4", "k3", "k2", "k1"]
    pages = [[item.key for item in await service.asearch(("team",), limit=2, offset=offset)] for offset in (0, 2, 4)]
    assert pages == [newest[0:2], newest[2:4], newest[4:6]]
    assert [item.key for item in await service.asearch(("team",), filter={"n": {"$gte": 2}}, limit=2)] == ["k5", "k4"]
    assert await service.asearch(("team",), limit=0) == []


async def test_the_service_filters_and_reads_only_what_a_batch_needs(service, transport, conn):
    """A filter travels as the slice's where predicate; the gets of one namespace are one slice;
    the puts of a batch to one state are one batch request, after the reads."""
    for number in range(30):
        await service.aput(("docs",), f"d{number}", {"n": number, "kind": "odd" if number % 2 else "even"})
    transport.requests.clear()

    found = await service.asearch(("docs",), filter={"kind": "odd", "n": {"$lt": 10}}, limit=50)
    assert sorted(item.value["n"] for item in found) == [1, 3, 5, 7, 9]
    slices = [path for method, path in transport.requests if path.endswith("/slice")]
    assert slices == ["/state/acme/langgraph:docs/slice"]
    transport.requests.clear()

    results = await service.abatch(
        [
            *(GetOp(("docs",), f"d{number}") for number in range(25)),
            GetOp(("docs",), "missing"),
            PutOp(("docs",), "d0", {"n": 100}),
            PutOp(("docs",), "d1", None),
            PutOp(("docs",), "new", {"n": 101}),
        ]
    )
    assert [item.value["n"] for item in results[:25]] == list(range(25)) and results[25] is None
    requests = transport.requests
    assert [method for method, _ in requests] == ["GET", "GET", "POST"]  # 26 specs: two slices, then one batch
    assert requests[-1] == ("POST", "/state/acme/langgraph:docs/deltas")
    log = await conn.fetch(
        "SELECT version, actor, created_at FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = 'langgraph:docs' "
        "ORDER BY version DESC LIMIT 3",
        TENANT,
    )
    assert [row["actor"] for row in log] == ["langgraph"] * 3
    assert len({row["created_at"] for row in log}) == 1  # one transaction
    assert (await service.aget(("docs",), "d1")) is None and (await service.aget(("docs",), "new")).value == {"n": 101}


async def test_a_refused_put_leaves_its_batch_unapplied(service, conn):
    """The service's error is raised, and no put of the batch to that state is applied."""
    await service.aput(("deep",), "keep", {"v": 1})
    versions = await conn.fetchval("SELECT count(*) FROM sms.deltas WHERE tenant_id = $1", TENANT)
    too_deep: dict[str, Any] = {}
    for _ in range(40):
        too_deep = {"x": too_deep}
    with pytest.raises(ValidationError):
        await service.abatch([PutOp(("deep",), "keep", {"v": 2}), PutOp(("deep",), "bad", too_deep)])
    assert (await service.aget(("deep",), "keep")).value == {"v": 1}
    assert await service.aget(("deep",), "bad") is None
    assert await conn.fetchval("SELECT count(*) FROM sms.deltas WHERE tenant_id = $1", TENANT) == versions


async def test_bad_input_is_refused_before_any_request(service, transport):
    transport.requests.clear()
    with pytest.raises(InvalidNamespaceError, match="too long"):
        await service.aput(("x" * 60, "y" * 60), "k", {"v": 1})
    for bad in [("the", "thing.about"), ("some", "fun", ""), ()]:
        with pytest.raises(InvalidNamespaceError):
            await service.abatch([PutOp(bad, "foo", {"v": 1})])
    with pytest.raises(ValueError, match="key must not be empty"):
        await service.aput(("notes",), "", {"v": 1})
    with pytest.raises(ValueError, match="compares numbers or strings"):
        await service.asearch(("notes",), filter={"n": {"$gt": [1]}})
    with pytest.raises(ValueError, match="Unsupported operator"):
        await service.abatch([PutOp(("notes",), "k", {"v": 1}), SearchOp(("notes",), filter={"n": {"$in": [1]}})])
    with pytest.raises(InvalidNamespaceError, match="too long"):
        await asyncio.to_thread(service.batch, [PutOp(("notes",), "k", {"v": 1}), PutOp(("z" * 130,), "k", {"v": 1})])
    with pytest.raises(ValueError, match="key must not be empty"):
        await service.abatch([PutOp(("notes",), "k", {"v": 1}), PutOp(("other",), "", {"v": 1})])
    with pytest.raises(NotImplementedError):
        await service.aput(("notes",), "k", {"v": 1}, ttl=5)
    with pytest.raises(ValueError, match="prefix"):
        StateMemoryStore("http://127.0.0.1:1", TENANT, prefix="a:b")
    assert transport.requests == []


async def test_namespaces_come_only_from_the_store_s_own_states(service, live_url):
    async with StateMemoryClient(live_url) as sms:
        await sms.apply_delta(TENANT, "launch", {"tasks.T1.status": "OPEN"})
        await sms.apply_delta(TENANT, "langgraph2:x", {"x.k": 1})
        await sms.apply_delta(
            "other", "langgraph:y", {"y.k": {"$set": {"value": {}, "created_at": "", "updated_at": ""}}}
        )
    await service.aget(("never", "written"), "k")
    await service.aput(("mine",), "k", {"v": 1})
    assert await service.alist_namespaces() == [("mine",)]
    assert namespaces(await service.asearch(())) == {("mine",)}


async def test_puts_outside_a_graph_run_carry_the_store_s_actor(live_url, conn):
    with StateMemoryStore(live_url, TENANT, prefix="app", actor="importer") as store:
        await store.aput(("seed",), "k", {"v": 1})
        await asyncio.to_thread(store.put, ("seed",), "j", {"v": 2})
    rows = await conn.fetch(
        "SELECT actor, lineage_id FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = 'app:seed'", TENANT
    )
    assert [(row["actor"], row["lineage_id"]) for row in rows] == [("importer", None), ("importer", None)]


# ---------------------------------------------------------------- graphs that use it


class Notes(TypedDict):
    topic: str
    saved: Annotated[list[str], operator.add]


def note_taker(name: str) -> Callable[..., Any]:
    """A sync node that remembers the topic under the node's name, and reads it back."""

    def node(state: Notes, *, store: BaseStore) -> dict[str, Any]:
        store.put(("graph", "notes"), name, {"topic": state["topic"], "by": name})
        return {"saved": [store.get(("graph", "notes"), name).value["by"]]}

    return node


async def test_a_graph_s_puts_carry_its_node_as_actor_and_its_run_as_lineage(live_url, conn):
    builder = StateGraph(Notes)
    builder.add_node("summarise", note_taker("summarise"))
    builder.add_node("critique", note_taker("critique"))
    builder.add_edge(START, "summarise")
    builder.add_edge("summarise", "critique")
    builder.add_edge("critique", END)
    run_id = uuid.uuid4()
    with StateMemoryStore(live_url, TENANT) as store:
        graph = builder.compile(store=store)
        final = await asyncio.to_thread(graph.invoke, {"topic": "coffee", "saved": []}, {"run_id": run_id})
        assert final["saved"] == ["summarise", "critique"]
        assert {item.key: item.value["topic"] for item in await store.asearch(("graph", "notes"))} == {
            "summarise": "coffee",
            "critique": "coffee",
        }

    rows = await conn.fetch(
        "SELECT actor, lineage_id FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = 'langgraph:graph:notes' "
        "ORDER BY version",
        TENANT,
    )
    assert [(row["actor"], row["lineage_id"]) for row in rows] == [
        ("summarise", str(run_id)),
        ("critique", str(run_id)),
    ]
    lineage = await conn.fetchrow(
        "SELECT * FROM sms.delta_lineage WHERE tenant_id = $1 AND lineage_id = $2", TENANT, str(run_id)
    )
    assert lineage["actors"] == ["critique", "summarise"]
    assert lineage["states"] == ["langgraph:graph:notes"] and lineage["deltas"] == 2


class Fanout(TypedDict):
    count: int
    done: Annotated[list[int], operator.add]


def fanning_graph(store: BaseStore, node_name: str) -> Any:
    """A graph whose one step sends `count` tasks to an async node that puts one item each."""

    async def remember(task: dict[str, int], *, store: BaseStore) -> dict[str, Any]:
        await store.aput(("shared", "board"), f"{node_name}-{task['i']:03d}", {"i": task["i"], "by": node_name})
        return {"done": [task["i"]]}

    def fan_out(state: Fanout) -> list[Send]:
        return [Send(node_name, {"i": number}) for number in range(state["count"])]

    builder = StateGraph(Fanout)
    builder.add_node(node_name, remember)
    builder.add_conditional_edges(START, fan_out, [node_name])
    builder.add_edge(node_name, END)
    return builder.compile(store=store)


async def test_two_graphs_writing_one_namespace_at_once_lose_nothing(live_url, conn):
    count = 60
    runs = {"alpha": uuid.uuid4(), "beta": uuid.uuid4()}
    with StateMemoryStore(live_url, TENANT) as first, StateMemoryStore(live_url, TENANT) as second:
        graphs = {"alpha": fanning_graph(first, "alpha"), "beta": fanning_graph(second, "beta")}
        finals = await asyncio.gather(
            *(graph.ainvoke({"count": count, "done": []}, {"run_id": runs[name]}) for name, graph in graphs.items())
        )
        assert [sorted(final["done"]) for final in finals] == [list(range(count))] * 2
        items = await first.asearch(("shared", "board"), limit=1000)

    assert len(items) == 2 * count
    assert {item.key for item in items} == {f"{name}-{number:03d}" for name in runs for number in range(count)}
    log = await conn.fetch(
        "SELECT actor, lineage_id, count(*) AS n FROM sms.deltas "
        "WHERE tenant_id = $1 AND fsa_id = 'langgraph:shared:board' GROUP BY 1, 2 ORDER BY 1",
        TENANT,
    )
    assert [(row["actor"], row["lineage_id"], row["n"]) for row in log] == [
        (name, str(run), count) for name, run in runs.items()
    ]
