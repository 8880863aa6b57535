"""Per-user memory through the API: what the reply sees, isolation, history, forgetting;
and the embedded responder that answers when no LLM is configured."""

from __future__ import annotations

import base64
import uuid
from urllib.parse import quote

from loadtest.fake_llm import FakeOpenAI
from tests.conftest import Server
from tests.test_conversation_contract import PNG

URL = "/api/v1/conversation"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def prompt_of_last_call(fake: FakeOpenAI) -> list[dict]:
    return fake.calls()[-1]["messages"]


def test_the_reply_sees_the_users_own_turns_and_name(llm_server: Server, fake: FakeOpenAI) -> None:
    ada, bob = unique("ada"), unique("bob")
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        client.post(URL, json={"user_id": ada, "message": "Hi, my name is Ada."})
        client.post(URL, json={"user_id": ada, "message": "What plans are there?"})
        ada_prompt = prompt_of_last_call(fake)
        client.post(URL, json={"user_id": bob, "message": "What plans are there?"})
        bob_prompt = prompt_of_last_call(fake)
    assert "name: Ada" in ada_prompt[0]["content"]
    assert [m["content"] for m in ada_prompt[1:]] == [
        "Hi, my name is Ada.",
        "This is the fake model speaking.",
        "What plans are there?",
    ]
    assert "Ada" not in str(bob_prompt)
    assert len(bob_prompt) == 2  # system and the question: no one else's turns


def test_the_same_user_id_in_another_account_is_someone_else(
    llm_server: Server, fake: FakeOpenAI
) -> None:
    user = unique("shared")
    other = llm_server.new_tenant(unique("acct"))
    with llm_server.client() as client:
        client.post(
            URL,
            json={"user_id": user, "message": "Call me Grace."},
            headers={"X-Api-Key": llm_server.demo_key},
        )
        client.post(
            URL, json={"user_id": user, "message": "Who am I?"}, headers={"X-Api-Key": other}
        )
        assert "Grace" not in str(prompt_of_last_call(fake))
        history = client.get(f"/api/v1/users/{user}/history", headers={"X-Api-Key": other}).json()
    assert [item["message"] for item in history["items"]] == ["Who am I?"]


def test_history_pages_newest_first(llm_server: Server, fake: FakeOpenAI) -> None:
    user = unique("pages") + ":a/b c"  # any characters, escaped in the path
    path = f"/api/v1/users/{quote(user, safe='')}/history"
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        request_ids = []
        for n in range(5):
            response = client.post(URL, json={"user_id": user, "message": f"message {n}"})
            request_ids.append(response.json()["request_id"])
        page = client.get(path, params={"limit": 2, "offset": 1}).json()
        everything = client.get(path).json()
    assert page["user_id"] == user and page["total"] == 5
    assert (page["limit"], page["offset"]) == (2, 1)
    assert [item["message"] for item in page["items"]] == ["message 3", "message 2"]
    assert [item["request_id"] for item in everything["items"]] == request_ids[::-1]
    assert everything["items"][0]["reply"] == "This is the fake model speaking."


def test_bad_paging_is_invalid_payload(llm_server: Server) -> None:
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"offset": -1}):
            response = client.get("/api/v1/users/u/history", params=params)
            assert response.status_code == 400
            assert response.json()["detail"]["code"] == "invalid_payload"
        too_long = client.get(f"/api/v1/users/{'u' * 129}/history")
        assert too_long.status_code == 404


def test_forgetting_a_user(llm_server: Server, fake: FakeOpenAI) -> None:
    user = unique("forget")
    with llm_server.client(headers={"X-Api-Key": llm_server.demo_key}) as client:
        client.post(URL, json={"user_id": user, "message": "My name is Alan."})
        other = unique("keep")
        client.post(URL, json={"user_id": other, "message": "My name is Joan."})
        gone = client.delete(f"/api/v1/users/{user}/memory")
        assert gone.status_code == 204 and gone.content == b""
        assert client.get(f"/api/v1/users/{user}/history").json()["total"] == 0
        client.post(URL, json={"user_id": user, "message": "Who am I?"})
        assert "Alan" not in str(prompt_of_last_call(fake))
        assert client.delete(f"/api/v1/users/{user}/memory").status_code == 204
        # Forgetting one user leaves the others alone.
        assert client.get(f"/api/v1/users/{other}/history").json()["total"] == 1


def test_the_embedded_responder_is_honest_personal_and_deterministic(server: Server) -> None:
    user = unique("embedded")
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        client.post(URL, json={"user_id": user, "message": "Hello, my name is Ada."})
        first = client.post(URL, json={"user_id": user, "message": "How much is the Pro plan?"})
        again = client.post(URL, json={"user_id": user, "message": "How much is the Pro plan?"})
        stranger = client.post(
            URL, json={"user_id": unique("x"), "message": "How much is the Pro plan?"}
        )
        png = base64.b64encode(PNG).decode()
        image = client.post(
            URL, json={"user_id": user, "image_b64": png, "image_mime": "image/png"}
        )
    reply = first.json()
    # No knowledge exists yet, so the honest answer is that there is none; never invented.
    assert "don't have information" in reply["reply"] and reply["sources"] == []
    assert "Ada" in reply["reply"] and "Ada" not in stranger.json()["reply"]
    assert again.json()["reply"] == reply["reply"]
    assert image.status_code == 200 and "can't look at images" in image.json()["reply"]
