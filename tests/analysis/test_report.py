"""The report end to end: a small study built with Optuna's API and metrics.json files
(complete, pruned, failed, running and waiting trials), partial and empty sweeps, the CLI, and
a headless-browser render when Chromium is installed."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess

import optuna
import pytest

from analysis.report import build_report, main
from analysis.synthetic import baselines_study, ofat_study
from tests.analysis.test_stats import FACTORS

optuna.logging.set_verbosity(optuna.logging.WARNING)
FIGURES = {"pareto_madds", "pareto_params", "pareto_latency_ms", "effects", "learning_curves", "history"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("multirun") / "ca_ofat"
    ofat_study(sweep, factors=FACTORS, effects={"attention.pool=max": 3.0}, seeds=range(5),
               seeds_of={"attention.gate=softmax_hw": [0, 1]}, noise=0.2, seed=1)
    return build_report(sweep, n_resamples=1000)


def test_files_and_default_location(report):
    assert report.out_dir.name == "report" and report.out_dir.parent.name == "ca_ofat"
    assert report.html.exists() and report.markdown.exists()
    assert set(report.figures) == FIGURES  # no importance figure for an OFAT study
    for p in list(report.figures.values()) + list(report.tables.values()):
        assert p.exists() and p.stat().st_size > 0, p
    assert set(report.tables) == {"trials_csv", "trials_parquet", "configs_csv", "configs_parquet",
                                  "comparisons_csv"}


def test_html_is_self_contained(report):
    html = report.html.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == len(FIGURES)
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_twin_references_existing_figures(report):
    md = report.markdown.read_text()
    refs = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert {r.split("/")[1][:-4] for r in refs} == FIGURES
    assert all((report.out_dir / r).exists() for r in refs)
    html_headings = re.findall(r"<h2 [^>]*>([^<]+)</h2>", report.html.read_text())
    assert html_headings == re.findall(r"^## (.+)$", md, flags=re.M)


def test_answers_name_the_verdicts(report):
    text = "\n".join(report.answers)
    assert re.search(r"pool=max vs avg: \+[23]\.\d pts val top-1 \[[^\]]+\], significantly better "
                     r"\(n=5 pairs, paired t-test, Holm p<0\.001\); \+0\.0% madds", text)
    assert re.search(r"act=relu vs h_swish: .* not significant \(n=5 pairs", text)
    assert "gate=softmax_hw vs sigmoid" in text and "too thin to answer: only 2 paired seeds" in text
    assert re.fullmatch(r"Bottom line: 1 of 3 design changes beat the reference significantly: "
                        r"pool=max \(\+[23]\.\d pts, \+0\.0% madds\)\. 1 has too little evidence "
                        r"to answer\.", report.answers[0])
    assert report.answers[1].startswith("Most accurate: pool=max, val top-1 ")
    assert "Best for its multiply-adds: the front has" in text and "Hypervolume" in text
    html = report.html.read_text()
    for line in report.answers:
        assert line.strip(" -").replace("<", "&lt;").replace(">", "&gt;")[:60] in html


def test_setup_failures_and_partial_state_are_stated(report):
    html = report.html.read_text()
    for needle in ("budget per trial", "epochs: 6", "batch_size: 128", "seeds</td><td>0 1 2 3 4",
                   "uncounted ops under madds", "aten::sigmoid \u00d732", "uncounted ops under full",
                   "FLOP convention madds", "cpu_count: 2", "torch threads per trial", "versions",
                   "num_classes: 10", "sizes: train 5120, val 1024, test 1024"):
        assert needle in html, needle
    # failed trial with its reason (HTML-escaped), pruned, running and waiting trials listed
    assert "Failed (1)" in html and "loss is nan at step 57 &lt;check lr&gt;" in html
    assert "<check lr>" not in html
    assert "Pruned (1)" in html and "Running (1)" in html and "Waiting (1)" in html
    assert "still running or was interrupted: 1 trial(s) running, 1 waiting" in html
    md = report.markdown.read_text()
    assert "### Failed (1)" in md and "&lt;check lr&gt;" in md


def test_baselines_are_compared_with_ca(tmp_path):
    baselines_study(tmp_path, seeds=range(3))
    paths = build_report(tmp_path, out_dir=tmp_path / "r", n_resamples=500)
    text = "\n".join(paths.answers)
    for kind in ("none", "se", "cbam", "eca"):
        assert f"attention={kind} vs ca:" in text
    assert paths.out_dir == tmp_path / "r"


def test_partial_and_empty_sweeps_report_without_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="ca_ofat")
    paths = build_report(tmp_path, out_dir=tmp_path / "empty")
    assert "no trials yet" in paths.html.read_text()
    assert paths.answers == ["No trial has completed yet: nothing to answer."]
    assert not paths.figures

    # a sweep that has only started: two running trials, nothing finished
    from optuna.distributions import CategoricalDistribution as C

    for seed in (0, 1):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING, params={"variant": "paper_default", "seed": seed},
            distributions={"variant": C(["paper_default", "attention.pool=max"]), "seed": C([0, 1])},
            user_attrs={"run_dir": str(tmp_path / str(seed)), "overrides": ["attention=ca", f"seed={seed}"]}))
    paths = build_report(tmp_path, out_dir=tmp_path / "started")
    html = paths.html.read_text()
    assert "Running (2)" in html and "2 trial(s) running" in html
    assert paths.answers == ["No trial has completed yet: nothing to answer."]


def test_cli_prints_answers_and_paths(report, tmp_path, capsys):
    src = report.out_dir.parent
    assert main([str(src), "--out", str(tmp_path / "cli"), "--min-epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Answers:\n* Bottom line: 1 of 3 design changes beat the reference")
    assert "\n* Most accurate: pool=max" in out
    assert "  - pool=max vs avg:" in out
    assert f"Report: {tmp_path / 'cli' / 'report.html'}" in out

    assert main([str(tmp_path / "missing")]) == 2
    assert "error: " in capsys.readouterr().err
    assert main(["postgresql://bob:hunter2@127.0.0.1:1/sweeps"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "bob:***@" in err


def _chromium():
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (/usr/bin/chromium); the render check needs a browser")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", report.html.as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.exists(), "Chromium wrote no screenshot"
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    colors = img.getcolors(maxcolors=1 << 20)
    # a blank or error page has a handful of colours; text + figures have thousands
    assert colors is not None and len(colors) > 500
