"""What a serving process imports: never Alembic (serve migrates in a child process), and Redis only when set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_server_modules_import_neither_alembic_nor_redis() -> None:
    code = (
        "import sys, aipower.cli.serve, aipower.app\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako', 'redis'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_create_app_without_redis_leaves_it_unimported(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from aipower.app import create_app\n"
        "from aipower.settings import Settings\n"
        f"create_app(Settings(database_url='sqlite:///{tmp_path}/x.db'))\n"
        "print('redis' in sys.modules, 'alembic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False False"


def test_http2_without_its_extra_says_what_to_install(tmp_path: Path) -> None:
    """AIPOWER_HTTP2=1 where zttp is not installed: serve stops before starting, naming the extra to install."""
    code = (
        "import sys\n"
        "sys.modules['zttp'] = None  # as if the http2 extra were not installed\n"
        "from aipower.cli import cli\n"
        "cli(['serve'])\n"
    )
    env = {"PATH": "/usr/bin:/bin", "AIPOWER_HTTP2": "1", "AIPOWER_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "AIPOWER_HTTP2=1 needs the http2 extra: pip install -e '.[http2]'" in done.stderr
    assert not (tmp_path / "x.db").exists()  # stopped before migrating
