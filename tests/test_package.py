"""Project invariants: `platform` stays the standard library; the package and CLI import."""

import subprocess
import sys
from pathlib import Path
from helpers import REPO




def test_import_platform_is_stdlib():
    import platform

    import drifting_platform

    assert callable(platform.system) and platform.system()  # the stdlib module, not our folder
    assert not (REPO / "platform" / "__init__.py").exists()
    assert Path(drifting_platform.__file__).resolve().parent == REPO / "platform" / "drifting_platform"


def test_platform_is_stdlib_from_repo_root():
    # from the repository root `platform/` is a folder on the path; it must not shadow stdlib
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.python_version())"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == platform_version()


def platform_version():
    import platform

    return platform.python_version()


def test_console_script_help():
    exe = Path(sys.executable).parent / "drifting-platform"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    for cmd in ("train", "sample", "data"):
        assert cmd in out.stdout
