"""Label Studio integration without a server: the fake client, and a fake HTTP session."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from labelstudio_util import CLASSES, annotate, make_manifest

from pipeline import __main__ as entry
from pipeline.core import artifacts, dataset, patches
from pipeline.core.errors import PipelineError
from pipeline.labelstudio import answers, cli, config, pull, push
from pipeline.labelstudio.client import AmbiguousError, Client, Retry, UnavailableError
from pipeline.labelstudio.fake import FakeClient
from pipeline.quality import consensus, select

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "0123456789abcdef0123456789abcdef01234567"
URL = "http://127.0.0.1:59999"


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A project folder with a clean-stage-like manifest, used as the working directory."""
    monkeypatch.chdir(tmp_path)
    make_manifest(tmp_path / "data" / "clean", n=60)
    return tmp_path


def _opts(work, **kw):
    return push.PushOptions(
        project="proj", image_dir=work / ".pipeline/label-images", model_version="abc1234+00000000", **kw
    )


def _chosen(how="issues", limit=20, **kw):
    df, classes = dataset.read_manifest("data/clean/manifest.parquet")
    return select.select(df, how, select.Selection(limit=limit, **kw)), classes


# --- labeling config ----------------------------------------------------------------------


def test_config_lists_classes_and_unsure_and_round_trips():
    xml = config.labeling_config(["a&b", 'say "hi"', "<c>"])
    assert xml.count("<Choice ") == 4 and 'value="unsure"' in xml
    assert config.classes_of(xml) == ["a&b", 'say "hi"', "<c>"]


@pytest.mark.parametrize("classes, match", [([], "empty"), (["a", "unsure"], "reserved"), (["a", "a"], "duplicates")])
def test_config_rejects_bad_class_lists(classes, match):
    with pytest.raises(PipelineError, match=match):
        config.labeling_config(classes)


# --- selection ----------------------------------------------------------------------------


def test_issues_are_lowest_label_score_first_within_bounds(work):
    chosen, _ = _chosen("issues", limit=5, min_score=0.1, max_score=0.5)
    assert chosen["is_label_issue"].all()
    assert chosen["label_score"].is_monotonic_increasing
    assert chosen["label_score"].between(0.1, 0.5).all() and len(chosen) == 5
    assert (chosen["reason"] == "issues").all()


def test_random_is_seeded_and_stable_when_samples_are_added(work):
    df, _ = dataset.read_manifest("data/clean/manifest.parquet")
    a = select.select(df, "random", select.Selection(limit=10, seed=3))
    b = select.select(df, "random", select.Selection(limit=10, seed=3))
    c = select.select(df, "random", select.Selection(limit=10, seed=4))
    assert a["sample_id"].tolist() == b["sample_id"].tolist() != c["sample_id"].tolist()
    more = pd.concat([df, df.iloc[:1].assign(sample_id="zz-new")], ignore_index=True)
    d = select.select(more, "random", select.Selection(limit=10, seed=3))
    assert len(set(a["sample_id"]) - set(d["sample_id"])) <= 1


def test_hard_and_ids_and_errors(work):
    df, _ = dataset.read_manifest("data/clean/manifest.parquet")
    hardness = pd.DataFrame({"sample_id": df["sample_id"], "hardness": np.arange(len(df))})
    hard = select.select(df, "hard", select.Selection(limit=3, hardness=hardness))
    assert hard["sample_id"].tolist() == ["s00059", "s00058", "s00057"]
    ids = select.select(df, "ids", select.Selection(ids=["s00007", "s00002"]))
    assert ids["sample_id"].tolist() == ["s00007", "s00002"]
    with pytest.raises(PipelineError, match="not in the manifest"):
        select.select(df, "ids", select.Selection(ids=["nope"]))
    with pytest.raises(PipelineError, match="must be one of"):
        select.select(df, "nearest", select.Selection())
    with pytest.raises(PipelineError, match="missing \\['is_label_issue'"):
        select.select(df.drop(columns=["is_label_issue"]), "issues", select.Selection())
    (work / "ids.txt").write_text("# audit\ns00001\n\ns00003\n")
    assert select.read_ids(str(work / "ids.txt")) == ["s00001", "s00003"]
    assert select.read_ids("a, b,") == ["a", "b"]


# --- push ---------------------------------------------------------------------------------


def test_push_is_idempotent_and_refreshes_changed_predictions(work):
    fake = FakeClient(document_root=str(work))
    chosen, classes = _chosen(limit=20)
    first = push.run(fake, chosen, classes, _opts(work, annotators=3))
    assert first["created"] == 20 and first["image_mode"] == "local" and first["images_written"] == 20
    project = fake.projects[first["project_id"]]
    assert project["maximum_annotations"] == 3 and config.classes_of(project["label_config"]) == classes
    task = next(iter(fake.tasks.values()))
    assert task["data"]["image"].startswith("/data/local-files/?d=.pipeline/label-images/s")
    assert task["data"]["sample_id"] and len(fake.preds) == 20
    assert project["model_version"] == "abc1234+00000000"  # set once predictions carry it

    again = push.run(fake, chosen, classes, _opts(work))
    assert again["created"] == 0 and again["already_there"] == 20
    assert again["predictions_refreshed"] == 0 and again["images_written"] == 0
    bigger, _ = _chosen(limit=25)
    grown = push.run(fake, bigger, classes, _opts(work))
    assert grown["created"] == 5 and len(fake.tasks) == 25

    newer = push.PushOptions(project="proj", image_dir=work / ".pipeline/label-images", model_version="def5678+1")
    refreshed = push.run(fake, bigger, classes, newer)
    assert refreshed["predictions_refreshed"] == 25 and len(fake.preds) == 25
    assert {p["model_version"] for p in fake.preds.values()} == {"def5678+1"}
    assert fake.projects[first["project_id"]]["model_version"] == "def5678+1"
    assert len(fake.storages) == 1  # reused, not re-created


def test_ambiguous_batch_is_rechecked_not_resent(work):
    class LosesAnswer(FakeClient):
        """The server applies the second batch, but the answer never arrives."""

        batches = 0

        def import_tasks(self, pid, tasks):
            ids = super().import_tasks(pid, tasks)
            LosesAnswer.batches += 1
            if LosesAnswer.batches == 2:
                raise AmbiguousError("the task import failed midway (no answer before the read timeout)")
            return ids

    fake = LosesAnswer(document_root=str(work))
    chosen, classes = _chosen(limit=25)
    counts = push.run(fake, chosen, classes, _opts(work, batch_size=10))
    sids = [t["data"]["sample_id"] for t in fake.tasks.values()]
    assert len(sids) == len(set(sids)) == 25
    assert fake.slept and counts["created"] == 15  # the lost batch was found, not re-sent


def test_interrupted_push_resumes_without_duplicates(work):
    fake = FakeClient(document_root=str(work))
    chosen, classes = _chosen(limit=30)

    calls = {"n": 0}
    original = fake.import_tasks

    def dies_on_third(pid, tasks):  # the process is killed while sending the third batch
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(pid, tasks)

    fake.import_tasks = dies_on_third
    with pytest.raises(KeyboardInterrupt):
        push.run(fake, chosen, classes, _opts(work, batch_size=5))
    assert len(fake.tasks) == 10
    fake.import_tasks = original
    resumed = push.run(fake, chosen, classes, _opts(work, batch_size=5))
    sids = [t["data"]["sample_id"] for t in fake.tasks.values()]
    assert resumed["created"] == 20 and len(sids) == len(set(sids)) == 30


def test_upload_mode_uploads_each_image_once(work):
    fake = FakeClient(document_root=None)
    chosen, classes = _chosen(limit=12)
    counts = push.run(fake, chosen, classes, _opts(work, images="upload"))
    assert counts["image_mode"] == "upload" and len(fake.files) == 12
    urls = {t["data"]["image"] for t in fake.tasks.values()}
    assert all(u.startswith("/data/upload/") and u.endswith(".png") for u in urls)
    push.run(fake, _chosen(limit=15)[0], classes, _opts(work, images="upload"))
    assert len(fake.files) == 15


def test_local_mode_outside_document_root_fails_clearly_and_auto_uploads(work, tmp_path_factory):
    elsewhere = str(tmp_path_factory.mktemp("other-root"))
    chosen, classes = _chosen(limit=4)
    with pytest.raises(PipelineError, match="not inside the server's document root.*--images upload"):
        push.run(FakeClient(document_root=elsewhere), chosen, classes, _opts(work, images="local"))
    fake = FakeClient(document_root=elsewhere)
    assert push.run(fake, chosen, classes, _opts(work))["image_mode"] == "upload"


def test_pngs_are_upscaled_grayscale(work):
    from PIL import Image

    chosen, classes = _chosen(limit=1)
    push.write_images(chosen, work / "imgs")
    img = Image.open(work / "imgs" / f"{chosen['sample_id'][0]}.png")
    assert img.size == (128, 128) and img.mode == "L"


# --- pull ---------------------------------------------------------------------------------


def _pushed_and_annotated(work, n=24, **kw):
    fake = FakeClient(document_root=str(work))
    chosen, classes = _chosen(limit=n)
    pid = push.run(fake, chosen, classes, _opts(work, annotators=3))["project_id"]
    expected = annotate(fake, pid, [11, 12, 13], **kw)
    return fake, expected


def test_pull_reaches_consensus_and_writes_a_sorted_patch(work):
    fake, expected = _pushed_and_annotated(work, skip_every=3, unsure_every=8)
    manifest, classes = dataset.read_manifest("data/clean/manifest.parquet")
    out, summary = pull.run(fake, pull.PullOptions(project="proj"), manifest, classes)
    got = patches.read_patches("labels/patches.csv", classes)
    assert got["sample_id"].is_monotonic_increasing and len(got) == 24
    assert dict(zip(got["sample_id"], got["label"])) == expected
    old = manifest.set_index("sample_id")["label"]
    assert (got["old_label"] == got["sample_id"].map(old)).all()
    assert got["consensus_quality"].between(0, 1).all() and set(got["annotators"]) <= {2, 3}
    assert summary["method"] == "crowdlab" and summary["counts"]["skipped"] == 8
    assert summary["counts"]["unsure"] == 3 and set(summary["annotators"]) == {"11", "12", "13"}
    assert summary["annotators"]["13"]["agreement"] < 1.0 == summary["annotators"]["12"]["agreement"]
    assert json.loads(Path("metrics/labels.json").read_text())["counts"]["changed"] == 24


def test_pull_uses_manifest_probabilities_and_merges_with_earlier_patches(work):
    make_manifest(work / "data" / "clean", n=60, pred_probs=True)
    fake, expected = _pushed_and_annotated(work, n=10)
    manifest, classes = dataset.read_manifest("data/clean/manifest.parquet")
    patches.write_patches(
        "labels/patches.csv",
        pd.DataFrame(
            [
                {
                    "sample_id": "zzz",
                    "old_label": "cat",
                    "label": "dog",
                    "consensus_quality": 0.5,
                    "annotators": 1,
                    "agreement": 1.0,
                    "revision": "r0",
                    "project": "old",
                },
                {
                    "sample_id": "s00000",
                    "old_label": "cat",
                    "label": "bird",
                    "consensus_quality": 0.1,
                    "annotators": 1,
                    "agreement": 1.0,
                    "revision": "r0",
                    "project": "old",
                },
            ]
        ),
    )
    _, summary = pull.run(fake, pull.PullOptions(project="proj"), manifest, classes)
    assert summary["probabilities"] == "out-of-fold probabilities"
    got = patches.read_patches("labels/patches.csv")
    assert len(got) == 11 and got["sample_id"].iloc[-1] == "zzz"
    assert got.set_index("sample_id").loc["s00000", "label"] == expected["s00000"]


def test_majority_vote_fallback_for_a_single_annotator():
    ans = pd.DataFrame({"sample_id": ["a", "b"], "annotator": ["1", "1"], "label": ["x", "y"], "annotation_id": [1, 2]})
    out, ann, method = consensus.consensus(ans, ["x", "y"], np.array([[0.9, 0.1], [0.5, 0.5]]))
    assert method.startswith("majority_vote") and out["label"].tolist() == ["x", "y"]
    assert out["consensus_quality"].tolist() == [1.0, 1.0] and ann["labeled"].tolist() == [2]


def test_answers_count_what_they_drop():
    res = config.choice_result
    tasks = [
        {
            "id": 1,
            "data": {"sample_id": "a"},
            "annotations": [
                {"id": 1, "completed_by": 5, "result": res("x")},
                {"id": 2, "completed_by": 5, "result": res("y")},  # re-answered: latest wins
                {"id": 3, "completed_by": {"id": 6}, "result": res(config.UNSURE)},
                {"id": 4, "completed_by": 7, "result": [], "was_cancelled": True},
                {"id": 5, "completed_by": 8, "result": res("zebra")},
                {"id": 6, "completed_by": 9, "result": []},
            ],
        },
        {"id": 2, "data": {}, "annotations": []},
    ]
    ans, counts = answers.answers(tasks, ["x", "y"])
    assert ans[["sample_id", "annotator", "label"]].values.tolist() == [["a", "5", "y"]]
    assert counts == dict(
        tasks=2, annotations=6, skipped=1, unsure=1, empty=1, not_a_class=1, tasks_without_sample_id=1, usable=1
    )


def test_read_patches_validates_and_apply_patches_relabels(tmp_path):
    path = tmp_path / "p.csv"
    assert patches.read_patches(path).empty
    with pytest.raises(PipelineError, match="no label patch"):
        patches.read_patches(path, missing_ok=False)
    path.write_text("sample_id,label\na,x\na,y\n")
    with pytest.raises(PipelineError, match="duplicate sample_id"):
        patches.read_patches(path)
    path.write_text("sample_id,label\na,x\nb,q\n")
    with pytest.raises(PipelineError, match="not in the class list: \\['q'\\]"):
        patches.read_patches(path, classes=["x", "y"])
    path.write_text("sample_id\na\n")
    with pytest.raises(PipelineError, match="missing \\['label'\\]"):
        patches.read_patches(path)
    df = pd.DataFrame({"sample_id": ["a", "b", "c"], "label": ["x", "x", "y"], "label_id": [0, 0, 1]})
    p = pd.DataFrame({"sample_id": ["a", "b", "zz"], "label": ["y", "x", "x"], "consensus_quality": [0.9, 0.9, 0.9]})
    out, counts = patches.apply_patches(df, p, ["x", "y"])
    assert out["label"].tolist() == ["y", "x", "y"] and out["label_id"].tolist() == [1, 0, 1]
    assert out["label_patched"].tolist() == [True, False, False]
    assert counts == {"patches": 3, "applied": 2, "changed": 1, "below_quality": 0, "unknown_ids": 1}


def test_patch_file_is_deterministic(tmp_path):
    row = {
        "sample_id": "b",
        "old_label": "x",
        "label": "y",
        "consensus_quality": 1 / 3,
        "annotators": 3,
        "agreement": 2 / 3,
        "revision": "r",
        "project": "p",
    }
    patches.write_patches(tmp_path / "1.csv", pd.DataFrame([row, {**row, "sample_id": "a"}]))
    patches.write_patches(tmp_path / "2.csv", pd.DataFrame([{**row, "sample_id": "a"}, row]))
    text = (tmp_path / "1.csv").read_text()
    assert text == (tmp_path / "2.csv").read_text()
    assert text.splitlines()[0] == ",".join(patches.COLUMNS) and "0.333333" in text


def test_pull_prints_the_git_step_that_records_the_patch(work, capsys):
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    fake, _ = _pushed_and_annotated(work, n=6)
    _, summary = pull.run(fake, pull.PullOptions(project="proj"), None, CLASSES)
    printed = capsys.readouterr().out
    step = summary["commit_with"]
    assert step in printed and step.startswith("git add labels/patches.csv metrics/labels.json && git commit -m ")
    assert not list(work.rglob("*.dvc"))  # not DVC's: git keeps the human labels
    done = subprocess.run(
        step,
        shell=True,
        cwd=work,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )
    assert done.returncode == 0, done.stderr
    log = subprocess.run(["git", "log", "--name-only", "--format=%s"], cwd=work, capture_output=True, text=True).stdout
    assert "labels: pull proj (6 samples" in log and "labels/patches.csv" in log


# --- the HTTP client: retries, backoff, one-line errors, no secrets --------------------------


class Response:
    def __init__(self, status, body=None):
        self.status_code, self._body = status, body
        self.text = json.dumps(body)
        self.content = self.text.encode()

    def json(self):
        return self._body


class Session:
    """Plays a script of outcomes (exceptions or Responses), recording each call."""

    def __init__(self, *script):
        self.script, self.calls = list(script), []

    def request(self, method, url, **kw):
        self.calls.append((method, url, kw.get("headers")))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def refused():
    return requests.ConnectionError(
        "HTTPConnectionPool(host='127.0.0.1', port=59999): Max retries "
        "exceeded (Caused by NewConnectionError('Connection refused'))"
    )


def _client(session, attempts=4):
    slept = []
    c = Client(URL, TOKEN, Retry(attempts=attempts, backoff=0.5), session=session, sleep=slept.append)
    return c, slept


def test_retries_with_exponential_backoff_then_succeeds():
    c, slept = _client(Session(refused(), Response(502), requests.ReadTimeout(), Response(200, [{"id": 1}])))
    assert c.request("GET", "/api/projects") == [{"id": 1}]
    assert slept == [0.5, 1.0, 2.0]
    assert c._session.calls[0][2] == {"Authorization": f"Token {TOKEN}"}


def test_gives_up_with_one_line_that_names_no_secret(caplog):
    caplog.set_level(logging.DEBUG)
    c, slept = _client(Session(*[refused()] * 4))
    with pytest.raises(UnavailableError) as e:
        c.request("GET", "/api/projects")
    msg = str(e.value)
    assert "\n" not in msg and "unavailable: connection refused after 4 tries" in msg
    assert e.value.exit_code == 3 and len(slept) == 3
    for text in (msg, caplog.text):
        assert TOKEN not in text and "59999" not in text and "127.0.0.1" not in text


def test_creating_request_is_not_blindly_resent():
    c, slept = _client(Session(requests.ReadTimeout()))
    with pytest.raises(AmbiguousError, match="midway"):
        c.request("POST", "/api/projects/1/import", unsafe=True, json=[])
    c, slept = _client(Session(refused(), Response(201, {"task_ids": [7]})))
    assert c.import_tasks(1, [{"data": {}}]) == [7] and slept == [0.5]


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_is_a_one_line_error_without_the_token(status):
    c, slept = _client(Session(Response(status, {"detail": f"Invalid token {TOKEN}"})))
    with pytest.raises(PipelineError) as e:
        c.request("GET", "/api/projects", what="the project list")
    assert f"refused the token in LABEL_STUDIO_API_KEY (HTTP {status})" in str(e.value)
    assert TOKEN not in str(e.value) and "\n" not in str(e.value) and not slept


def test_other_client_errors_are_scrubbed():
    c, _ = _client(Session(Response(400, {"validation_errors": {"x": [f"bad {URL} {TOKEN}"]}})))
    with pytest.raises(PipelineError, match="rejected the thing \\(HTTP 400\\)") as e:
        c.request("POST", "/api/x", what="the thing")
    assert TOKEN not in str(e.value) and URL not in str(e.value)


def test_missing_environment_names_the_variables(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(PipelineError, match="set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        Client.from_env()


# --- the command line ---------------------------------------------------------------------


def test_cli_round_trip_keeps_secrets_out_of_files_and_logs(work, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("LABEL_STUDIO_URL", URL)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    fake = FakeClient(document_root=str(work))
    monkeypatch.setattr(cli, "_client", lambda args: fake)
    params = str(ROOT / "params.yaml")
    assert (
        entry.main(
            [
                "label",
                "--params",
                params,
                "push",
                "--project",
                "proj",
                "--select",
                "issues",
                "--limit",
                "9",
                "--annotators",
                "3",
            ]
        )
        == 0
    )
    annotate(fake, 1, [1, 2, 3])
    assert entry.main(["label", "--params", params, "pull", "--project", "proj"]) == 0
    assert len(patches.read_patches("labels/patches.csv")) == 9
    out = capsys.readouterr()
    blobs = [
        caplog.text,
        out.out,
        out.err,
        json.dumps(list(fake.tasks.values())),
        json.dumps(list(fake.projects.values())),
    ]
    blobs += [p.read_bytes().decode("latin-1") for p in work.rglob("*") if p.is_file()]
    for text in blobs:
        assert TOKEN not in text and URL not in text


def test_balance_outside_active_is_a_one_line_error(work, capsys):
    argv = ["label", "--params", str(ROOT / "params.yaml"), "push", "--project", "p", "--select", "typical"]
    assert entry.main([*argv, "--balance"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--balance applies to --select active, not --select typical" in err and len(err.splitlines()) == 1


def test_label_help_lists_subcommands_and_split_does_not_import_it():
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    helptext = subprocess.run(
        [sys.executable, "-m", "pipeline", "label", "--help"], cwd=ROOT, capture_output=True, text=True, env=env
    ).stdout
    assert all(s in helptext for s in ("push", "pull", "serve"))
    code = (
        "import sys; from pipeline import __main__ as m; m.stage_parser('split'); print(sorted("
        "k for k in sys.modules if k == 'requests' or k.startswith('pipeline.labelstudio')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert loaded.stdout.strip() == "[]", loaded.stderr


def test_personal_access_token_is_exchanged_and_refreshed_once():
    pat = "eyJhbGciOiJIUzI1NiJ9." + "a" * 40 + ".sig"
    session = Session(
        Response(200, {"access": "acc1"}),
        Response(401, {}),
        Response(200, {"access": "acc2"}),
        Response(200, {"ok": True}),
    )
    c = Client(URL, pat, Retry(attempts=3, backoff=0.0), session=session, sleep=lambda s: None)
    assert c.request("GET", "/api/projects") == {"ok": True}
    headers = [h for _, _, h in session.calls]
    assert headers == [{}, {"Authorization": "Bearer acc1"}, {}, {"Authorization": "Bearer acc2"}]


def test_pull_weighs_the_oof_probabilities_that_clean_drops(work, capsys):
    # clean's manifest has no probabilities; `label pull` joins oof's by sample_id (artifacts.PROBS)
    make_manifest(work / "data" / "oof", n=60, pred_probs=True)
    make_manifest(work / "data" / "clean", n=60)
    clean_df, _ = dataset.read_manifest(work / "data" / "clean")
    assert artifacts.PROBS not in clean_df
    joined = artifacts.with_oof_probs(clean_df, work / "data" / "oof")
    assert joined[artifacts.PROBS].notna().all() and len(joined[artifacts.PROBS].iloc[0]) == len(CLASSES)
    assert artifacts.with_oof_probs(clean_df, work / "nothing") is clean_df


# --- active learning over the unlabeled pool ---------------------------------------------------


def _pooled_manifest(work, n=60):
    """The manifest with every third sample unlabeled (the pool), ensemble probabilities whose
    certainty falls with the index within the pool, and embeddings in two tight clusters: rows
    from 30 on in one (but row 48), the rest in the other."""
    df, classes = dataset.read_manifest(make_manifest(work / "data" / "clean", n=n, pred_probs=True))
    pool = np.arange(n) % 3 == 0
    df.loc[pool, ["label", "split", "is_label_issue"]] = [None, "unlabeled", False]
    df.loc[pool, "label_id"] = -1
    certainty = np.linspace(0.95, 0.4, pool.sum())
    df.loc[pool, "probs"] = pd.Series(
        [[c, (1 - c) / 2, (1 - c) / 2] for c in certainty], index=df.index[pool], dtype=object
    )
    df.loc[pool, "suggested_label"] = classes[0]
    df["disagreement"] = np.where(pool, np.arange(n) / n, np.nan)
    far = (np.arange(n) >= 30) & (np.arange(n) != 48)
    emb = np.stack([far, ~far], axis=1).astype(float)
    emb += np.random.default_rng(0).normal(0, 0.01, emb.shape)
    return df, classes, (df["sample_id"].to_numpy(), emb)


def test_active_picks_only_the_pool_least_certain_first_and_diverse(work):
    df, classes, emb = _pooled_manifest(work)
    plain = select.select(df, "active", select.Selection(limit=4))
    assert (plain["split"] == "unlabeled").all() and plain["active_score"].is_monotonic_increasing
    least = df[df["split"] == "unlabeled"].iloc[::-1]["sample_id"].head(4).tolist()  # certainty falls with index
    assert plain["sample_id"].tolist() == least
    # the least certain (rows 57, 54, 51, 48, ...) share a cluster but row 48: k-center takes it second
    diverse = select.select(df, "active", select.Selection(limit=2, embeddings=emb, shortlist=3))
    assert diverse["sample_id"].tolist() == ["s00057", "s00048"] and least[:2] == ["s00057", "s00054"]
    # k-means: one pick per cluster of the shortlist, the heavier (five of the six least certain) first
    spread = select.select(df, "active", select.Selection(limit=2, embeddings=emb, shortlist=3, diversity="kmeans"))
    assert spread["sample_id"].iloc[1] == "s00048" and spread["sample_id"].iloc[0] in least + ["s00045", "s00042"]
    with pytest.raises(PipelineError, match="--diversity"):
        select.select(df, "active", select.Selection(limit=2, embeddings=emb, shortlist=3, diversity="umap"))
    by_bald = select.select(df, "active", select.Selection(limit=3, score="disagreement"))
    assert by_bald["disagreement"].is_monotonic_decreasing and (by_bald["split"] == "unlabeled").all()
    with pytest.raises(PipelineError, match="no unlabeled samples"):
        select.select(df[df["split"] != "unlabeled"], "active", select.Selection(limit=3))


def test_balanced_active_gives_each_predicted_class_its_share_least_certain_first():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(3, 0.5), 300)
    probs[:240, 0] += 2  # the model predicts class 0 for most of the pool
    probs /= probs.sum(1, keepdims=True)
    df = pd.DataFrame({"sample_id": [f"s{i:04d}" for i in range(300)], "split": "unlabeled", "probs": list(probs)})
    emb = (df["sample_id"].to_numpy(), rng.normal(size=(300, 4)))
    predicted = lambda out: np.stack(out["probs"].to_numpy()).argmax(1)  # noqa: E731
    plain = select.select(df, "active", select.Selection(limit=30, embeddings=emb, diversity="kmeans"))
    assert np.bincount(predicted(plain), minlength=3).max() > 10  # unbalanced without it
    for diversity in ("kcenter", "kmeans"):
        s = select.Selection(limit=31, embeddings=emb, diversity=diversity, balance=True)
        out = select.select(df, "active", s)
        assert sorted(np.bincount(predicted(out), minlength=3)) == [10, 10, 11]
        assert (predicted(out)[:3] != predicted(out)[0]).sum() == 2  # round-robin: a cut stays balanced
    # without embeddings: each class's least certain (lowest ActiveLab score among its predictions)
    out = select.select(df, "active", select.Selection(limit=6, balance=True))
    full = select.select(df, "active", select.Selection(limit=300))
    for c in range(3):
        of_c = full[predicted(full) == c]["sample_id"].tolist()
        assert sorted(out[predicted(out) == c]["sample_id"]) == sorted(of_c[:2])


def test_typiclust_takes_the_most_typical_sample_of_each_part_the_labeled_set_covers_least():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    blobs = np.repeat(centres, 30, axis=0) + rng.normal(0, 0.5, (90, 2))
    labeled = np.zeros(90, bool)
    labeled[:10] = True  # blob 0 is covered
    picked = select.typiclust(blobs, labeled, 2, max_clusters=3)
    assert sorted(p // 30 for p in picked) == [1, 2]  # one from each uncovered blob
    for p in picked:  # from its dense middle, not its rim
        blob = p // 30
        radius = np.linalg.norm(blobs[blob * 30 : blob * 30 + 30] - centres[blob], axis=1)
        assert radius[p % 30] <= np.quantile(radius, 0.25)
    more = select.typiclust(blobs, labeled, 5, max_clusters=3)
    assert (~labeled[more]).all() and len(set(more)) == 5 and {p // 30 for p in more} == {0, 1, 2}
    assert set(more[:2]) == set(picked)  # the uncovered blobs come first


def test_typical_selects_pool_samples_knowing_the_labeled_set_that_split_filters_out(work):
    df, classes, emb = _pooled_manifest(work)
    ids, vectors = emb
    train = df.loc[df["split"] == "train", "sample_id"].to_numpy()
    # every labeled sample sits in the cluster of rows >= 30: the other cluster is the uncovered one
    vectors = vectors.copy()
    vectors[df["split"].to_numpy() == "train"] = [1.0, 0.0]
    s = select.Selection(limit=1, embeddings=(ids, vectors), labeled=train)
    one = select.select(df, "typical", s, ["unlabeled"])
    assert (one["split"] == "unlabeled").all() and len(one) == 1
    assert int(one["sample_id"].iloc[0][1:]) < 30 or one["sample_id"].iloc[0] == "s00048"  # the uncovered cluster
    with pytest.raises(PipelineError, match="embeddings"):
        select.select(df, "typical", select.Selection(limit=1), ["unlabeled"])
    with pytest.raises(PipelineError, match="no unlabeled samples"):
        select.select(df[df["split"] != "unlabeled"], "typical", s)


def test_kmeans_pp_over_outer_products_matches_the_built_gradient_embeddings():
    rng = np.random.default_rng(0)
    a, h = rng.normal(size=(200, 3)), rng.normal(size=(200, 5))
    g = (a[:, :, None] * h[:, None, :]).reshape(200, -1)  # what BADGE would build

    def built(k: int, seed: int) -> list[int]:
        r, chosen = np.random.default_rng(seed), [int(np.argmax((g * g).sum(1)))]
        dist = np.full(len(g), np.inf)
        while len(chosen) < k:
            dist = np.minimum(dist, ((g - g[chosen[-1]]) ** 2).sum(1))
            dist[chosen] = 0
            chosen.append(int(r.choice(len(g), p=dist / dist.sum())))
        return chosen

    for seed in (0, 1):
        assert select.kmeans_pp_outer(a, h, 15, seed).tolist() == built(15, seed)
    same = select.kmeans_pp_outer(np.ones((4, 2)), np.ones((4, 3)), 3)  # all alike: no odds to draw by
    assert sorted(same.tolist()) == [0, 1, 2]


def test_badge_picks_pool_samples_uncertain_and_spread_over_the_embedding(work):
    df, classes, emb = _pooled_manifest(work)
    out = select.select(df, "badge", select.Selection(limit=4, embeddings=emb), ["unlabeled"])
    assert (out["split"] == "unlabeled").all() and len(out) == 4
    assert out["sample_id"].iloc[0] == "s00057"  # the least certain has the largest gradient
    assert {int(i[1:]) >= 30 and i != "s00048" for i in out["sample_id"]} == {True, False}  # both clusters
    again = select.select(df, "badge", select.Selection(limit=4, embeddings=emb), ["unlabeled"])
    assert again["sample_id"].tolist() == out["sample_id"].tolist()  # seeded
    with pytest.raises(PipelineError, match="embeddings"):
        select.select(df, "badge", select.Selection(limit=1), ["unlabeled"])
    with pytest.raises(PipelineError, match="no unlabeled samples"):
        select.select(df[df["split"] != "unlabeled"], "badge", select.Selection(limit=1, embeddings=emb))


def test_badge_takes_the_uncertain_few_from_a_mostly_certain_pool_over_every_cluster():
    rng = np.random.default_rng(0)
    n, k = 1000, 40
    uncertain = rng.random(n) < 0.1
    probs = np.where(uncertain[:, None], rng.dirichlet(np.ones(4), n), [0.997, 0.001, 0.001, 0.001])
    cluster = rng.integers(0, 8, n)
    emb = np.eye(8)[cluster] + rng.normal(0, 0.05, (n, 8))
    df = pd.DataFrame({"sample_id": [f"s{i:04d}" for i in range(n)], "split": "unlabeled", "probs": list(probs)})
    out = select.select(df, "badge", select.Selection(limit=k, embeddings=(df["sample_id"].to_numpy(), emb)))
    rows = out["sample_id"].str[1:].astype(int).to_numpy()
    assert uncertain[rows].sum() >= k - 2  # the certain 90% of the pool sit near 0: one or two picks at most
    assert len(set(cluster[rows[uncertain[rows]]])) == 8


def test_active_push_pre_annotates_and_a_pull_patches_answered_pool_samples_only(work):
    df, classes, emb = _pooled_manifest(work)
    chosen = select.select(df, "active", select.Selection(limit=6, embeddings=emb))
    fake = FakeClient(document_root=str(work))
    pid = push.run(fake, chosen, classes, _opts(work))["project_id"]
    tasks = sorted(fake.export(pid), key=lambda t: t["data"]["sample_id"])
    assert {t["data"]["sample_id"] for t in tasks} == set(chosen["sample_id"]) and len(tasks) == 6
    assert all(t["data"]["label"] == "" and t["data"]["split"] == "unlabeled" for t in tasks)
    assert all(p["result"][0]["value"]["choices"] == [classes[0]] for p in fake.preds.values())  # pre-annotated
    answers = {t["data"]["sample_id"]: classes[1] for t in tasks[:5]}
    for t in tasks[:5]:
        fake.create_annotation(t["id"], config.choice_result(classes[1]), completed_by=7)
    fake.create_annotation(tasks[5]["id"], config.choice_result(config.UNSURE), completed_by=7)
    pull.run(fake, pull.PullOptions(project="proj"), df, classes)
    got = patches.read_patches("labels/patches.csv", classes)
    assert dict(zip(got["sample_id"], got["label"])) == answers  # the "unsure" one stays in the pool
    assert (got["old_label"] == "").all()
    labeled, _ = patches.apply_patches(df, got, classes)
    assert (labeled.set_index("sample_id").loc[list(answers), "label_id"] == 1).all()
    assert labeled.set_index("sample_id").loc[tasks[5]["data"]["sample_id"], "label_id"] == -1


def test_a_label_studio_export_is_a_source_that_round_trips(work):
    """Push, answer (a majority, a tie, an "unsure", a skip, a class outside the list), export,
    ingest the export: answered tasks keep the majority label, the rest join the pool."""
    import yaml

    fake = FakeClient(document_root=str(work))
    chosen, classes = _chosen(how="random", limit=8)
    pid = push.run(fake, chosen, classes, _opts(work))["project_id"]
    tasks = sorted(fake.export(pid), key=lambda t: t["data"]["sample_id"])
    answers = {0: ["dog", "dog", "cat"], 1: ["bird", "cat"], 2: [config.UNSURE], 3: ["fish"], 4: ["cat"]}
    for k, chosen_labels in answers.items():
        for user, label in enumerate(chosen_labels):
            fake.create_annotation(tasks[k]["id"], config.choice_result(label), completed_by=user)
    fake.create_annotation(tasks[5]["id"], [], completed_by=1, was_cancelled=True)
    (work / "export.json").write_text(json.dumps(fake.export(pid)))
    policy = str(ROOT / "augment_policies" / "randaugment.yaml")
    ingest_cfg = {"source": "labelstudio", "path": "export.json", "classes": classes, "image_size": 8}
    ingest_cfg["max_bad_fraction"] = 0.5  # 1 of 8
    (work / "params.yaml").write_text(yaml.safe_dump({"ingest": ingest_cfg, "augment": {"policy": policy}}))
    assert entry.main(["ingest", "--quiet", "--out", "data/ingest", "--metrics", "ingest.json"]) == 0
    df, got_classes = dataset.read_manifest("data/ingest")
    metrics = json.loads((work / "ingest.json").read_text())
    assert got_classes == classes and metrics["in"] == 8 and metrics["by_reason"] == {"unknown_label": 1}
    by_path = df.set_index("path")["label"]
    path = {k: f".pipeline/label-images/{tasks[k]['data']['sample_id']}.png" for k in range(8)}
    assert by_path[path[0]] == "dog" and by_path[path[1]] == "bird" and by_path[path[4]] == "cat"
    assert by_path[[path[k] for k in (2, 5, 6, 7)]].isna().all() and metrics["unlabeled"] == 4
    assert path[3] not in by_path.index  # "fish" is not a class: quarantined with its reason
    quarantine = pd.read_csv(work / "data/ingest/quarantine.csv")
    assert "'fish' is not in ingest.classes" in quarantine.set_index("path").loc[path[3], "detail"]
    (work / "bad.json").write_text('{"tasks": []}')
    ingest_cfg["path"] = "bad.json"
    (work / "params.yaml").write_text(yaml.safe_dump({"ingest": ingest_cfg, "augment": {"policy": policy}}))
    assert entry.main(["ingest", "--quiet", "--out", "data/ingest", "--metrics", "ingest.json"]) != 0


def test_k_means_picks_one_per_dense_cluster_where_k_center_takes_the_outlier():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    x = np.concatenate([np.repeat(centres, 5, axis=0) + rng.normal(0, 0.02, (15, 2)), [[9.0, 9.0]]])
    weight = np.r_[np.ones(15), 1e-6]  # the outlier is the most certain of the shortlist (as `active` weighs)
    picked = select.k_means(x, 3, weight)
    assert sorted(p // 5 for p in picked) == [0, 1, 2]
    assert 15 in select.k_center(x, 3)


def test_bench_active_reads_curves_both_ways(monkeypatch):
    """The active-learning bench reports the issue's target (the share of random's labels a
    strategy needs to reach random's final accuracy) beside the converse, interpolated."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_active import summary

    random = [(500, 0.78), (1000, 0.81), (1500, 0.83), (2000, 0.84), (2500, 0.85)]
    ahead = summary([(500, 0.78), (1000, 0.83), (1500, 0.86), (2000, 0.86), (2500, 0.87)], random)
    assert ahead["labels_to_random_final"] == pytest.approx(1000 + 500 * 2 / 3)
    assert ahead["share"] == pytest.approx(1333.33 / 2500, abs=1e-4)
    assert ahead["random_labels_to_match"] is None  # random never gets to 0.87
    behind = summary([(500, 0.78), (1000, 0.79), (1500, 0.80), (2000, 0.82), (2500, 0.84)], random)
    assert behind["labels_to_random_final"] is None and behind["share"] is None
    assert behind["random_labels_to_match"] == pytest.approx(2000)


def test_label_serve_installs_the_server_from_its_lock(tmp_path, monkeypatch):
    from pipeline.labelstudio import serve

    calls = []
    monkeypatch.setattr(serve.subprocess, "run", lambda cmd: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    serve.ensure_venv(tmp_path / "venv")
    assert serve.LOCK.exists() and calls[1][-3:] == ["--no-deps", "-r", str(serve.LOCK)]
    monkeypatch.setattr(serve, "LOCK", tmp_path / "absent.txt")  # an install without its checkout
    calls.clear()
    serve.ensure_venv(tmp_path / "venv")
    assert calls[1][-2:] == ["label-studio==1.23.2", "sentry-sdk<3"]
