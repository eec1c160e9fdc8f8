"""The README's instructions work as typed and agree with the code."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from cifarnet.tracking.store import shared_view_url

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(text: str, marker: str) -> str:
    m = re.search(re.escape(marker) + r".*?```bash\n(.*?)```", text, re.S)
    assert m, marker
    return m.group(1).strip()


def test_offline_variable_reaches_every_command_of_the_main_chain(tmp_path) -> None:
    """"Put CIFARNET_DATA=... in front of it" reached only `python3 -m venv` of the `&&`
    chain. The README's own lines, with the three commands replaced by probes that print
    what they see, must give the path to all three."""
    export = _block_after(README, "Without internet")
    assert export.startswith("export CIFARNET_DATA=")
    chain = _block_after(README, "<!-- main-command -->")
    steps = [c.strip() for c in chain.split("&&")]
    assert len(steps) == 3
    probe = " && ".join('sh -c \'printf "%s\\n" "$CIFARNET_DATA"\'' for _ in steps)
    script = export.replace("/path/to/cifar10-jpeg", str(tmp_path)) + "\n" + probe
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "CIFARNET_DATA"})
    assert out.stdout.split() == [str(tmp_path)] * 3
    assert "in front of it" not in README


def test_install_size_and_the_cpu_build_are_stated() -> None:
    assert "6.4 GB" in README
    assert "--index-url https://download.pytorch.org/whl/cpu" in README


def test_the_documented_ui_address_is_the_one_the_code_prints() -> None:
    url = shared_view_url("http://127.0.0.1:5000", "1")
    assert f"`{url}`" in README
    assert "(docs/mlflow_runs.png)" in README and (ROOT / "docs" / "mlflow_runs.png").is_file()


def test_the_commands_table_lists_every_command() -> None:
    """`results` was missing from the README's table of commands (a new user found it only
    in its own section)."""
    from cifarnet.cli.main import main

    table = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    for name, command in main.commands.items():
        if not command.hidden:
            assert f"| `cifarnet-exp {name}" in table, name
