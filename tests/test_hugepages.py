"""The CLI's re-execution with glibc's huge-page tunable: when it happens, what it passes on, and that it is off
when it cannot help."""

import os
import subprocess
import sys

import pytest

from wam_jax.tools import hugepages


@pytest.fixture
def helps(monkeypatch):
    """A Linux machine where the tunable helps: glibc 2.36, THP in madvise mode."""
    monkeypatch.setattr(hugepages.sys, "platform", "linux")
    monkeypatch.setattr(hugepages, "_glibc_version", lambda: (2, 36))
    monkeypatch.setattr(hugepages, "_thp_mode", lambda: "madvise")


def test_tunable_added_when_it_helps(helps):
    assert hugepages.tunables_with_hugepages({}) == "glibc.malloc.hugetlb=1"
    # other tunables the user set are kept, in front
    assert (hugepages.tunables_with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
            == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


@pytest.mark.parametrize("environ", [{"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},   # the user's choice stands
                                     {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},   # already re-executed
                                     {"WAM_JAX_HUGEPAGES": "0"}])                      # turned off
def test_no_reexec_when_set_or_off(helps, environ):
    assert hugepages.tunables_with_hugepages(environ) is None


@pytest.mark.parametrize("glibc, thp, platform", [((2, 34), "madvise", "linux"),   # glibc without the tunable
                                                  (None, "madvise", "linux"),      # not glibc (musl)
                                                  ((2, 36), "always", "linux"),    # huge pages without advice
                                                  ((2, 36), "never", "linux"),     # advice ignored
                                                  ((2, 36), None, "linux"),        # no THP at all
                                                  ((2, 36), "madvise", "darwin")])
def test_no_reexec_where_it_cannot_help(monkeypatch, glibc, thp, platform):
    monkeypatch.setattr(hugepages.sys, "platform", platform)
    monkeypatch.setattr(hugepages, "_glibc_version", lambda: glibc)
    monkeypatch.setattr(hugepages, "_thp_mode", lambda: thp)
    assert hugepages.tunables_with_hugepages({}) is None


def test_reexec_keeps_the_command_line(helps, monkeypatch):
    calls = []
    monkeypatch.setattr(hugepages.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(hugepages.sys, "orig_argv", ["python3", "-B", "-m", "wam_jax", "demo", "--out", "x"])
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    hugepages.reexec_with_hugepages()
    (path, argv, env), = calls
    assert path == sys.executable and argv == [sys.executable, "-B", "-m", "wam_jax", "demo", "--out", "x"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and env["PATH"] == os.environ["PATH"]


def test_thp_mode_parses_the_bracketed_entry(tmp_path, monkeypatch):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    monkeypatch.setattr(hugepages, "THP_MODE", str(path))
    assert hugepages._thp_mode() == "madvise"
    monkeypatch.setattr(hugepages, "THP_MODE", str(tmp_path / "missing"))
    assert hugepages._thp_mode() is None


def test_cli_runs_through_the_reexec():
    """`python -m wam_jax` on this machine (re-executed or not) still answers."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-m", "wam_jax", "--help"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and "usage: python -m wam_jax" in out.stdout
