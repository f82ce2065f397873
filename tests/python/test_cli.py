"""The `kvserve` console script, as a user runs it."""

import subprocess

import kvserve


def test_version():
    out = subprocess.run(["kvserve", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"kvserve {kvserve.__version__}"


def test_help():
    out = subprocess.run(["kvserve", "--help"], capture_output=True, text=True, check=True)
    assert "usage: kvserve" in out.stdout
