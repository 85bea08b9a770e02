async def test_apply_and_read(client):
    r = await client.post("/state/t/f/delta", json={"a.b": 1})
    assert r.status_code == 200, r.text
    r = await client.get("/state/t/f")
    assert r.json() == {"tenant_id": "t", "fsa_id": "f", "version": 1, "state": {"a": {"b": 1}}}


async def test_live(live_url):
    import httpx

    async with httpx.AsyncClient(base_url=live_url) as c:
        r = await c.post("/state/t/f/delta", json={"x": {"$inc": 2}})
        assert r.json()["version"] == 1
