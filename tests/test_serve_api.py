"""``qvimclap serve``'s JSON API through FastAPI's test client: search equals `qvimclap search --json`, only
an index's own files are served, every bad upload is a one-line 4xx, the token, and the generation queue."""

from __future__ import annotations

import copy
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _tiny_audioldm import TinyEmbedder, save_tiny_audioldm
from conftest import tone
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason='the serve extra is not installed: pip install -e ".[serve]"')
from fastapi.testclient import TestClient  # noqa: E402

from qvimclap import api  # noqa: E402
from qvimclap.cli import app as cli_app  # noqa: E402
from qvimclap.cli._app import USER_ERROR_EXIT  # noqa: E402
from qvimclap.data import open_dataset  # noqa: E402
from qvimclap.errors import StoreError  # noqa: E402
from qvimclap.generation import GenerationConfig, generate_from_imitation, load_audioldm  # noqa: E402
from qvimclap.serve import Limits, ServeState, create_app, load_state  # noqa: E402
from qvimclap.serve.jobs import GenerationQueue  # noqa: E402
from qvimclap.serve.library import LoadedIndex, UploadFolder  # noqa: E402


@pytest.fixture(scope="module")
def library(serve_library: tuple[Path, Path]) -> tuple[Path, Path]:
    return serve_library


@pytest.fixture(scope="module")
def state(library: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    state = load_state([library[1]], work_dir=tmp_path_factory.mktemp("uploads"))
    yield state
    state.close()


@pytest.fixture(scope="module")
def client(state: ServeState) -> TestClient:
    return TestClient(create_app(state))


def _upload(path: Path) -> dict:
    return {"audio": (path.name, path.read_bytes(), "audio/wav")}


def _wav_bytes(x: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, x, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_health_and_indexes(client: TestClient, library: tuple[Path, Path]) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["num_indexes"] == 1 and not health["token_required"]
    assert health["generation"] == {"available": False, "hint": health["generation"]["hint"]}
    assert "--audioldm" in health["generation"]["hint"] and "--model" in health["generation"]["hint"]
    (listed,) = client.get("/api/indexes").json()["indexes"]
    assert listed["name"] == "sounds" and listed["num_items"] == 4 and listed["dim"] == 384
    assert listed["query_encoder"] == "qvim:scratch:mn04" and listed["path"] == str(library[1])
    assert client.get("/").text.startswith("<!doctype html>")
    assert "qvimclap-recorder" in client.get("/static/recorder-worklet.js").text
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/api/search", "/api/generate"}
    docs = client.get("/docs").text
    assert "/static-docs/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()  # offline docs


def test_search_is_the_cli_search(client: TestClient, library: tuple[Path, Path]) -> None:
    corpus, index_path = library
    query = open_dataset(corpus).queries[1]
    response = client.post("/api/search?k=3&index=sounds", files=_upload(query))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["index"] == "sounds" and body["k"] == 3
    cli = CliRunner().invoke(cli_app, ["search", str(query), "--index", str(index_path), "-k", "3", "--json"])
    assert cli.exit_code == 0, cli.output
    expected = json.loads(cli.stdout)
    assert [{k: h[k] for k in ("rank", "score", "id", "path")} for h in body["hits"]] == expected
    kinds = {Path(h["id"]).stem.rsplit("_", 1)[0] for h in expected}
    assert [h["label"] for h in body["hits"]] == [Path(h["id"]).stem.rsplit("_", 1)[0] for h in expected]
    assert len(kinds) == 3  # the labels the store kept for the corpus's kinds
    # The first hit's player fetches exactly that file.
    first = body["hits"][0]
    assert first["audio_url"] == f"/api/audio/sounds/{first['id']}"
    sound = client.get(first["audio_url"])
    assert sound.status_code == 200 and sound.content == Path(first["path"]).read_bytes()
    # A stored sound finds itself first.
    reference = corpus / expected[2]["id"]
    hits = client.post("/api/search?k=1", files=_upload(reference)).json()["hits"]
    assert hits[0]["id"] == expected[2]["id"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_concurrent_searches_give_the_same_answers(
    client: TestClient, state: ServeState, library: tuple[Path, Path]
) -> None:
    queries = open_dataset(library[0]).queries
    loaded = state.indexes["sounds"]
    expected = {
        q.name: [h.id for h in api.search(q, loaded.index, 4, encoder=loaded.embedder)] for q in queries
    }
    answers: list[tuple[str, list[str], int]] = []

    def ask(query: Path) -> None:
        response = client.post("/api/search?k=4", files=_upload(query))
        answers.append((query.name, [h["id"] for h in response.json().get("hits", [])], response.status_code))

    threads = [threading.Thread(target=ask, args=(q,)) for q in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == len(queries)
    assert all(status == 200 and ids == expected[name] for name, ids, status in answers)


@pytest.mark.parametrize(
    "item",
    [
        "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "references%2F..%2F..%2Fpairs.csv",
        "pairs.csv",
        "references/../pairs.csv",
    ],
)
def test_only_files_of_the_index_are_served(client: TestClient, item: str) -> None:
    response = client.get(f"/api/audio/sounds/{item}")
    assert response.status_code == 404 and "has no item" in response.json()["detail"]


def test_no_other_path_is_served(client: TestClient, library: tuple[Path, Path]) -> None:
    assert client.get("/api/audio/nope/references%2Fx.wav").status_code == 404
    for path in ("/static/..%2F..%2Fapp.py", "/static/%2E%2E/library.py", "/static-docs/..%2F__init__.py"):
        response = client.get(path)
        assert response.status_code == 404 and b"import" not in response.content


def test_an_indexed_file_gone_from_disk_is_a_404(state: ServeState, tmp_path: Path) -> None:
    loaded = state.indexes["sounds"]
    moved = copy.copy(loaded.index)
    moved.paths = [str(tmp_path / "moved" / Path(p).name) for p in loaded.index.paths]
    library = LoadedIndex("sounds", loaded.path, moved, loaded.embedder, loaded.embedder_spec, loaded.rows)
    client = TestClient(create_app(ServeState({"sounds": library}, UploadFolder(tmp_path / "up"))))
    response = client.get(f"/api/audio/sounds/{moved.ids[0]}")
    assert response.status_code == 404 and "is not on this machine" in response.json()["detail"]


def _bad_uploads() -> list[tuple[str, dict | None, int, str]]:
    silent = _wav_bytes(np.zeros(8000, np.float32), 8000)
    long = _wav_bytes(tone(300.0, 31.0, 8000), 8000)
    junk = {"audio": ("hum.wav", b"RIFF....WAVEjunk", "audio/wav")}
    return [
        ("not audio", junk, 422, "hum.wav: not a readable audio file"),
        ("empty", {"audio": ("hum.wav", b"", "audio/wav")}, 422, "hum.wav: file is empty (0 bytes)"),
        ("silent", {"audio": ("quiet.wav", silent, "audio/wav")}, 422, "quiet.wav: audio is silent"),
        ("too long", {"audio": ("long.wav", long, "audio/wav")}, 413, "long.wav: 31.0 s is longer than"),
        ("text, not a file", {"audio": (None, "hello")}, 422, "audio:"),
        ("no audio field", None, 422, "audio: Field required"),
        ("hostile name", {"audio": ("../../x.wav", b"junk")}, 422, "x.wav: not a readable audio file"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _bad_uploads(), ids=lambda case: case[0])
def test_bad_uploads_are_one_line_4xx(client: TestClient, state: ServeState, case: tuple) -> None:
    _, files, status, message = case
    response = client.post("/api/search", files=files) if files else client.post("/api/search")
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert message in detail and "\n" not in detail and "Traceback" not in detail
    assert str(state.uploads.path) not in detail  # the loader's message names the upload, not the temp file
    assert list(state.uploads.path.iterdir()) == []  # nothing left behind


def test_bad_parameters(client: TestClient, library: tuple[Path, Path]) -> None:
    files = _upload(open_dataset(library[0]).queries[0])
    cases = {
        "/api/search?k=0": (422, "k: Input should be greater than or equal to 1"),
        "/api/search?k=101": (422, "k 101 is above this server's limit of 100"),
        "/api/search?k=many": (422, "k: Input should be a valid integer"),
        "/api/search?index=other": (404, "no index named 'other'; this server has sounds"),
    }
    for url, (status, message) in cases.items():
        response = client.post(url, files=files)
        assert response.status_code == status and response.json()["detail"].startswith(message)


def test_upload_size_limit(state: ServeState, library: tuple[Path, Path], tmp_path: Path) -> None:
    small = ServeState(state.indexes, UploadFolder(tmp_path / "up"), Limits(max_upload_bytes=100_000))
    client = TestClient(create_app(small))
    ok = _wav_bytes(tone(300.0, 1.0, 8000), 8000)  # 16 kB
    big = _wav_bytes(tone(300.0, 7.0, 8000), 8000)  # 112 kB: over the file limit, under the body limit
    huge = _wav_bytes(tone(300.0, 30.0, 8000), 8000)  # 480 kB: refused before it is parsed
    assert client.post("/api/search", files={"audio": ("ok.wav", ok)}).status_code == 200
    response = client.post("/api/search", files={"audio": ("big.wav", big)})
    assert (
        response.status_code == 413
        and "big.wav: larger than this server's limit" in response.json()["detail"]
    )
    response = client.post("/api/search", files={"audio": ("huge.wav", huge)})
    assert response.status_code == 413 and "request larger than" in response.json()["detail"]
    assert list((tmp_path / "up").iterdir()) == []


def test_token(state: ServeState, library: tuple[Path, Path], tmp_path: Path) -> None:
    guarded = ServeState(state.indexes, UploadFolder(tmp_path / "up"), token="s3cret")
    client = TestClient(create_app(guarded))
    query = open_dataset(library[0]).queries[0]
    assert client.get("/api/health").json()["token_required"] is True
    assert client.get("/api/indexes").status_code == 401
    assert client.get("/api/indexes", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/indexes", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/api/search", files=_upload(query)).status_code == 401
    response = client.post("/api/search", files=_upload(query), headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    url = response.json()["hits"][0]["audio_url"]
    assert client.get(url).status_code == 401
    assert client.get(url + "?token=s3cret").status_code == 200  # audio players send it in the URL
    assert "Bearer" in client.get(url).json()["detail"]


def test_generation_off_says_how_to_enable_it(client: TestClient, library: tuple[Path, Path]) -> None:
    response = client.post("/api/generate", files=_upload(open_dataset(library[0]).queries[0]))
    assert response.status_code == 503 and "--audioldm" in response.json()["detail"]


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_audioldm(tmp_path_factory.mktemp("ldm") / "tiny-audioldm")


def test_generation_queue(
    state: ServeState, ldm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QVIMCLAP_CACHE_DIR", str(tmp_path / "cache"))
    model, ldm = TinyEmbedder(), load_audioldm(ldm_dir, cache_dir=tmp_path / "cache")
    queue = GenerationQueue(ldm, model)
    generating = ServeState(state.indexes, UploadFolder(tmp_path / "up"), generation=queue)
    client = TestClient(create_app(generating))
    hum = tone(330.0, 0.8, 16000) + tone(990.0, 0.8, 16000, 0.1)
    files = {"audio": ("hum.wav", _wav_bytes(hum, 16000), "audio/wav")}
    params = "duration_s=0.5&steps=3&guidance=2.5"

    # Two jobs: one runs at a time, in order; the second waits behind the first, visibly.
    release, unet_calls = threading.Event(), []

    def hold_the_second_step(*_: object) -> None:  # the first job pauses after step 1 of 3
        unet_calls.append(1)
        if len(unet_calls) == 2:
            release.wait(10)

    hook = ldm.unet.register_forward_pre_hook(hold_the_second_step)
    first = client.post(f"/api/generate?{params}&seed=1", files=files)
    second = client.post(f"/api/generate?{params}&seed=2&text=a+bell&text_weight=0.3", files=files)
    assert first.status_code == second.status_code == 202
    assert first.json()["status"] in ("queued", "running") and second.json()["position"] in (0, 1)
    deadline = time.monotonic() + 10
    while (running := client.get(f"/api/jobs/{first.json()['id']}").json())["step"] < 1:
        assert time.monotonic() < deadline, running
        time.sleep(0.01)
    assert (running["status"], running["step"], running["num_steps"], running["position"]) == (
        "running",
        1,
        3,
        None,
    )
    waiting = client.get(f"/api/jobs/{second.json()['id']}").json()
    assert (waiting["status"], waiting["position"], waiting["step"]) == ("queued", 1, 0)
    release.set()
    jobs = [first.json(), second.json()]
    for job in jobs:
        while (status := client.get(f"/api/jobs/{job['id']}").json())["status"] in ("queued", "running"):
            time.sleep(0.01)
        assert status["status"] == "done", status
        assert status["step"] == status["num_steps"] == 3 and status["duration_s"] == pytest.approx(0.5)
        job["audio"] = client.get(status["audio_url"])

    hook.remove()

    # Each result is exactly what the library makes for that imitation, seed and text.
    wave = sf.read(io.BytesIO(files["audio"][1]), dtype="float32")[0]
    config = GenerationConfig(duration_s=0.5, num_steps=3, seed=1)
    expected = generate_from_imitation(wave, 16000, model, ldm, config).waveforms[0]
    audio, rate = sf.read(io.BytesIO(jobs[0]["audio"].content), dtype="float32")
    assert rate == 16000 and audio.shape == expected.shape
    np.testing.assert_allclose(audio, expected, atol=1e-6)
    config = GenerationConfig(duration_s=0.5, num_steps=3, seed=2)
    expected = generate_from_imitation(wave, 16000, model, ldm, config, text="a bell", text_weight=0.3)
    audio = sf.read(io.BytesIO(jobs[1]["audio"].content), dtype="float32")[0]
    np.testing.assert_allclose(audio, expected.waveforms[0], atol=1e-6)
    assert "attachment" not in jobs[0]["audio"].headers["content-disposition"]

    # Bad settings and unknown jobs are plain 4xx; nothing is left in the upload folder.
    response = client.post("/api/generate?duration_s=11", files=files)
    assert response.status_code == 422 and "at most 10.24 s" in response.json()["detail"]
    response = client.post("/api/generate?scheduler=x&text_weight=2", files=files)
    assert response.status_code == 422 and "text_weight" in response.json()["detail"]
    assert client.get("/api/jobs/nope").status_code == 404
    assert list((tmp_path / "up").iterdir()) == []
    queue.close()


def test_generation_queue_is_bounded(state: ServeState, ldm_dir: Path, tmp_path: Path) -> None:
    queue = GenerationQueue(load_audioldm(ldm_dir, cache_dir=tmp_path), TinyEmbedder(), max_pending=1)
    block = threading.Event()

    def wait_for_the_test(*_: object) -> None:
        block.wait(10)

    queue.audioldm.unet.register_forward_pre_hook(wait_for_the_test)
    client = TestClient(
        create_app(ServeState(state.indexes, UploadFolder(tmp_path / "up"), generation=queue))
    )
    files = {"audio": ("hum.wav", _wav_bytes(tone(330.0, 0.5, 16000), 16000), "audio/wav")}
    statuses = [
        client.post("/api/generate?duration_s=0.2&steps=1", files=files).status_code for _ in range(4)
    ]
    block.set()
    queue.close()
    assert statuses[0] == 202 and statuses[-1] == 429


# ------------------------------------------------------------------------------------------ the command
def test_cli_refuses_other_hosts_without_a_token(library: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--index", str(library[1]), "--host", "0.0.0.0"])
    assert result.exit_code == USER_ERROR_EXIT
    assert (
        result.stderr.startswith("Error: --host 0.0.0.0 lets other machines") and "--token" in result.stderr
    )


def test_cli_user_errors(library: tuple[Path, Path], tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    result = CliRunner().invoke(cli_app, ["serve", "--index", str(library[1]), "--port", str(port)])
    assert result.exit_code == USER_ERROR_EXIT and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    busy.close()
    result = CliRunner().invoke(cli_app, ["serve", "--index", str(tmp_path / "missing.faiss"), "--port", "0"])
    assert result.exit_code == USER_ERROR_EXIT and "missing.faiss" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(cli_app, ["serve", "--index", str(library[1]), "--port", "99999"])
    assert result.exit_code == USER_ERROR_EXIT
    assert result.stderr.strip() == "Error: --port 99999: a TCP port is 0 to 65535 (0 picks a free one)"


def test_models_and_indexes_are_loaded_once(
    library: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = tmp_path / "more.faiss"
    second.write_bytes(library[1].read_bytes())
    loads: list[str] = []
    real_load = api.load_embedder
    monkeypatch.setattr(api, "load_embedder", lambda spec: loads.append(spec) or real_load(spec))
    state = load_state([library[1], second], work_dir=tmp_path / "up")
    assert loads == ["qvim:scratch:mn04"]  # one encoder for both indexes of that space
    assert state.indexes["sounds"].embedder is state.indexes["more"].embedder
    with pytest.raises(StoreError, match="two indexes are named 'more'"):
        load_state([second, second], work_dir=tmp_path / "up")
    client = TestClient(create_app(state))
    assert [i["name"] for i in client.get("/api/indexes").json()["indexes"]] == ["sounds", "more"]
    query = open_dataset(library[0]).queries[0]
    assert client.post("/api/search?index=more&k=2", files=_upload(query)).json()["index"] == "more"
    assert loads == ["qvim:scratch:mn04"]  # searching loads nothing
