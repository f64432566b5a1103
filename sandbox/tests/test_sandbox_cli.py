"""``distil-sandbox``'s errors: what it cannot run is one line and an exit code, never a traceback."""

from __future__ import annotations

import pytest
from distil_sandbox import cli


@pytest.mark.parametrize("args,message", [
    (["--timeout", "-1"], "error: --timeout must be a number of seconds above 0 and at most 86400 (a day), not -1.0"),
    (["--memory-mb", "0"], "error: --memory-mb must be a positive integer, not 0"),
    (["--backend", "nope"], "error: unknown sandbox backend 'nope'; choose one of auto, bwrap, docker, process"),
])
def test_a_job_the_sandbox_refuses_is_a_usage_error(tmp_path, capsys, args, message):
    program = tmp_path / "hi.py"
    program.write_text("print('hi')\n")
    assert cli.main(["run", str(program), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == message + "\n"


def test_a_file_that_is_not_utf8_is_a_usage_error(tmp_path, capsys):
    program = tmp_path / "bad.py"
    program.write_bytes(b"print('ok')\n\xff\xfe bad\n")
    assert cli.main(["run", str(program), "--backend", "process"]) == 2
    assert capsys.readouterr().err == f"error: {program} is not UTF-8 text (byte 0xff at offset 12): save the program as UTF-8\n"


def test_building_the_image_without_an_engine_says_to_start_one(tmp_path, capsys, monkeypatch):
    pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    assert cli.main(["image", "build"]) == 1
    assert capsys.readouterr().err == (f"error: cannot reach the Docker engine at unix://{tmp_path}/no-engine.sock: "
                                       "[Errno 2] No such file or directory; start dockerd or point DOCKER_HOST at a "
                                       "running engine\n")
