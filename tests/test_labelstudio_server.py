"""Label Studio integration against a real server, started once for the session.

The server runs from its own virtual environment, `.venv-ls` (`make labelstudio` creates it;
`make test` depends on that), bound to 127.0.0.1 on a free port, with its database and its
local-files document root in a temporary folder. Annotators are simulated through the API.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labelstudio_util import annotate, make_manifest

from pipeline import __main__ as entry
from pipeline.core import dataset, patches
from pipeline.labelstudio import serve
from pipeline.labelstudio.client import Client, Retry

pytestmark = pytest.mark.slow  # `make test-all`: runs dvc repro / a real server

ROOT = Path(__file__).resolve().parents[1]
VENV_LS = ROOT / ".venv-ls"
PARAMS = str(ROOT / "params.yaml")


class Server:
    def __init__(self, base: Path):
        self.base, self.data, self.root = base, base / "data", base / "docroot"
        self.root.mkdir(parents=True)
        self.token, self.password = secrets.token_hex(20), secrets.token_hex(8)
        self.port = serve.free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{serve.HOST}:{self.port}"

    def start(self) -> None:
        self.proc = serve.start(
            self.port, self.data, self.root, self.token, self.password, venv=VENV_LS, log_path=self.base / "server.log"
        )
        serve.wait_ready(self.port, self.proc, timeout=600)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def client(self, attempts: int = 3) -> Client:
        return Client(self.url, self.token, Retry(attempts=attempts, backoff=0.2))


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory):
    if not serve.executable(VENV_LS).exists():
        pytest.fail(
            f"{serve.executable(VENV_LS)} is missing: run `make labelstudio` to install "
            "Label Studio into its own environment",
            pytrace=False,
        )
    server = Server(tmp_path_factory.mktemp("labelstudio"))
    server.start()
    yield server
    serve.stop(server.proc)


@pytest.fixture
def ls(ls_server, monkeypatch):
    if ls_server.proc.poll() is not None:
        ls_server.start()
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.token)
    return ls_server


def _workdir(server: Server, name: str, n: int) -> Path:
    """A project folder inside the server's document root, with `n // 2` label issues."""
    work = server.root / name
    make_manifest(work / "data" / "clean", n=n)
    return work


def _push_cmd(project: str, limit: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "label",
        "--params",
        PARAMS,
        "--quiet",
        "push",
        "--project",
        project,
        "--select",
        "issues",
        "--limit",
        str(limit),
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _sample_ids(client: Client, title: str) -> list[str]:
    return [t["data"]["sample_id"] for t in client.export(client.find_project(title)["id"])]


def _task_count(client: Client, pid: int) -> int:
    return client.request("GET", f"/api/projects/{pid}")["task_number"]


def _wait_for_tasks(client: Client, title: str, at_least: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        project = client.find_project(title)
        if project and _task_count(client, project["id"]) >= at_least:
            return
        time.sleep(0.05)
    pytest.fail(f"the push never reached {at_least} tasks")


def test_round_trip_push_annotate_pull(ls, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    work = _workdir(ls, "roundtrip", n=400)
    monkeypatch.chdir(work)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    assert (
        entry.main(
            [
                "label",
                "--params",
                PARAMS,
                "push",
                "--project",
                "roundtrip",
                "--select",
                "issues",
                "--limit",
                "200",
                "--annotators",
                "3",
            ]
        )
        == 0
    )
    client = ls.client()
    project = client.find_project("roundtrip")
    assert project["maximum_annotations"] == 3
    tasks = client.export(project["id"])
    assert len(tasks) == 200 and len({t["data"]["sample_id"] for t in tasks}) == 200
    predictions = client.predictions(project["id"])
    assert len(predictions) == 200 and {p["model_version"] for p in predictions} == {project["model_version"]}
    image = client.request("GET", tasks[0]["data"]["image"], raw=True)
    assert image.headers["content-type"] == "image/png" and image.content[:4] == b"\x89PNG"

    users = [client.create_user(f"annotator{i}@example.com")["id"] for i in range(3)]
    expected = annotate(client, project["id"], users, skip_every=7, unsure_every=16, workers=3)
    assert entry.main(["label", "--params", PARAMS, "pull", "--project", "roundtrip"]) == 0

    got = patches.read_patches("labels/patches.csv")
    assert len(got) == 200 and dict(zip(got["sample_id"], got["label"])) == expected
    assert (got["old_label"] != got["label"]).all()  # every flagged label was wrong here
    summary = json.loads(Path("metrics/labels.json").read_text())
    assert summary["method"] == "crowdlab" and summary["counts"]["unsure"] == 13
    assert summary["counts"]["skipped"] == 29 and len(summary["annotators"]) == 3
    assert not Path("labels/patches.csv.dvc").exists()  # git keeps it, not DVC

    out = capsys.readouterr()
    port = f":{ls.port}"
    for text in [caplog.text, out.out, out.err, json.dumps(tasks)] + [
        p.read_bytes().decode("latin-1") for p in work.rglob("*") if p.is_file()
    ]:
        assert ls.token not in text and port not in text


def test_repush_creates_no_duplicates_and_adds_only_new(ls):
    work = _workdir(ls, "repush", n=120)

    def run(limit):
        return subprocess.run(
            _push_cmd("repush", limit),
            cwd=work,
            env=_env(),  # noqa: E731
            capture_output=True,
            text=True,
        )

    for limit in (40, 40, 60):
        assert run(limit).returncode == 0
    client = ls.client()
    sids = _sample_ids(client, "repush")
    assert len(sids) == len(set(sids)) == 60

    # the model changed its mind: a new push replaces each task's prediction, once
    manifest = work / "data/clean/manifest.parquet"
    df, classes = dataset.read_manifest(manifest)
    dataset.write_manifest(df.assign(suggested_label=df["label"]), manifest, classes)
    assert run(60).returncode == 0
    project = client.find_project("repush")
    predictions = client.predictions(project["id"])
    assert len(predictions) == 60 and {p["model_version"] for p in predictions} == {project["model_version"]}
    label_of = dict(zip(df["sample_id"], df["label"]))
    task_sid = {t["id"]: t["data"]["sample_id"] for t in client.export(project["id"])}
    assert all(p["result"][0]["value"]["choices"] == [label_of[task_sid[p["task"]]]] for p in predictions)


def test_server_stopped_mid_push_fails_on_one_line_then_resumes(ls):
    work = _workdir(ls, "fault", n=600)
    proc = subprocess.Popen(
        _push_cmd("fault", 300, "--batch-size", "5", "--retries", "2", "--timeout", "10"),
        cwd=work,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_tasks(ls.client(), "fault", 40, proc)
    ls.kill()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pipeline label: error: ") and "unavailable" in lines[0]
    assert ls.token not in err and f":{ls.port}" not in err

    ls.start()
    done = subprocess.run(_push_cmd("fault", 300), cwd=work, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    sids = _sample_ids(ls.client(), "fault")
    assert len(sids) == len(set(sids)) == 300


def test_push_killed_mid_batch_resumes_without_duplicates(ls):
    work = _workdir(ls, "killed", n=600)
    proc = subprocess.Popen(
        _push_cmd("killed", 300, "--batch-size", "5"),
        cwd=work,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_tasks(ls.client(), "killed", 40, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(_sample_ids(ls.client(), "killed"))
    assert 40 <= before < 300
    done = subprocess.run(_push_cmd("killed", 300), cwd=work, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    sids = _sample_ids(ls.client(), "killed")
    assert len(sids) == len(set(sids)) == 300


def test_wrong_token_is_a_one_line_error(ls):
    work = _workdir(ls, "badtoken", n=10)
    wrong = "f" * 40
    res = subprocess.run(
        _push_cmd("badtoken", 5),
        cwd=work,
        capture_output=True,
        text=True,
        env={**_env(), "LABEL_STUDIO_API_KEY": wrong},
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "refused the token in LABEL_STUDIO_API_KEY" in res.stderr
    assert wrong not in res.stderr and f":{ls.port}" not in res.stderr


def test_patched_labels_survive_dvc_exp_run_and_reach_the_training_set(ls):
    """The whole loop: dvc repro flags label issues, push, three annotators, pull; then `dvc exp run`
    twice, the second failing on a bad value: the patch is byte-identical and its labels train."""
    from e2e_util import STAGES, make_project, ran, run

    work = make_project(  # the generators off: this is about labels, and the loop runs every stage twice
        ls.root / "loop",
        clean={"inject_noise": {"rate": 0.2, "kind": "symmetric", "seed": 0}},
        adversarial={"enabled": False},
        synthesize={"enabled": False},
    )
    run(["dvc", "repro"], work)
    flagged = dataset.read_manifest(work / "data/clean")[0]
    assert flagged["is_label_issue"].sum() >= 200
    env = {
        **_env(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": ls.token,
    }
    for args in (
        ["push", "--project", "loop", "--select", "issues", "--limit", "200", "--annotators", "3"],
        None,
        ["pull", "--project", "loop"],
    ):
        if args is None:  # three annotators, sometimes disagreeing
            client = ls.client()
            pid = client.find_project("loop")["id"]
            users = [client.create_user(f"loop{i}@example.com")["id"] for i in range(3)]
            expected = annotate(client, pid, users, workers=3)
            continue
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "label", "--quiet", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    assert "git add labels/patches.csv" in done.stdout  # pull says how to record the labels
    patch = (work / "labels/patches.csv").read_bytes()
    assert len(patches.read_patches(work / "labels/patches.csv")) == len(expected)

    rerun = ran(run(["dvc", "exp", "run"], work))
    # oof (its fold models train on the human labels) and everything after it
    assert rerun == STAGES[STAGES.index("oof") :]
    failed = subprocess.run(
        ["dvc", "exp", "run", "-S", "train.epochs=-1"], cwd=work, env=env, capture_output=True, text=True
    )
    assert failed.returncode != 0 and "train.epochs" in failed.stdout + failed.stderr
    assert (work / "labels/patches.csv").read_bytes() == patch
    run(["dvc", "status"], work)
    assert (work / "labels/patches.csv").read_bytes() == patch

    clean, _ = dataset.read_manifest(work / "data/clean")
    assembled, _ = dataset.read_manifest(work / "data/assemble")
    label_of = dict(zip(clean["sample_id"], clean["label"]))
    assert all(label_of[s] == want for s, want in expected.items())
    real = assembled[assembled["origin"] == "real"].set_index("sample_id")["label"]
    in_train = [s for s in expected if s in real.index]
    assert in_train and all(real[s] == expected[s] for s in in_train)
