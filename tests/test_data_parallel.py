"""Data-parallel ``ug sample``: launched processes write the files of one process, byte for byte.

Two CPU processes with gloo, started by ``torchrun`` (``python -m torch.distributed.run``), by
``accelerate launch`` (``--multi_gpu`` is its flag for several local processes through
torch.distributed.run: on a machine without GPUs they run on the CPU; ``--cpu`` would start one
process, or use mpirun with a hostfile), or by the test itself with the environment both set
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), which shows each
process's exit status and messages. Five samples in batches of two: rank 0 samples batches
{0, 1} and {4}, rank 1 batch {2, 3}.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ug_core.cli import main
from ug_core.launch import write_atomically

TESTS = Path(__file__).resolve().parent
UG = ["-m", "ug_core.cli"]
FAULTS = [str(TESTS / "dp_faults.py")]
# --num-samples, not --n: torchrun's own parser takes --n for an abbreviation of its options.
ARGS = ["--num-samples", "5", "--batch-size", "2", "--steps", "2", "--threads", "1",
        "--no-progress"]  # fmt: skip
TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """The launched processes' environment; a fatal signal (SIGABRT) prints every stack."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}
    return {**env, "PYTHONFAULTHANDLER": "1"}


def torchrun(cwd: Path, program: list[str], *argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run([*cmd, *program, *argv], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=TIMEOUT)  # fmt: skip


def accelerate_launch(cwd: Path, program: list[str], *argv: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
        "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
    ]  # fmt: skip
    # HF_HOME: no accelerate config file of the user's is read.
    return subprocess.run([*cmd, *program, *argv], capture_output=True, text=True, cwd=cwd,
                          env=_env(HF_HOME=str(cwd / "hf")), timeout=TIMEOUT)  # fmt: skip


def env_launch(cwd: Path, program: list[str], *argv: str) -> list[tuple[int, str, str]]:
    """Two processes with a launcher's environment; (exit status, stdout, stderr) of each."""
    port, procs = str(free_port()), []
    try:
        for rank in range(2):
            env = _env(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
            out, err = (open(cwd / f"rank{rank}.{s}", "w") for s in ("out", "err"))
            with out, err:
                procs.append(subprocess.Popen([sys.executable, *program, *argv], stdout=out,
                                              stderr=err, text=True, cwd=cwd, env=env))  # fmt: skip
        codes = [p.wait(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [
        (code, (cwd / f"rank{r}.out").read_text(), (cwd / f"rank{r}.err").read_text())
        for r, code in enumerate(codes)
    ]


def failure(stderr: str) -> str:
    """What a failed launch printed: every stack of a fatal signal (faulthandler's, from its
    first line, without its list of extension modules), else the last 3000 characters."""
    start = stderr.find("Fatal Python error")
    if start < 0:
        return stderr[-3000:]
    return re.sub(r"\nExtension modules:[^\n]*", "", stderr[start:])[:12000]


def assert_same_files(expected: Path, got: Path, n: int = 5) -> None:
    names = sorted(p.name for p in expected.iterdir())
    assert len(names) == 3 * n + 2 and {"grid.png", "metrics.json"} <= set(names)
    assert sorted(p.name for p in got.iterdir()) == names
    for name in names:
        assert (got / name).read_bytes() == (expected / name).read_bytes(), name


def no_partial_folders(folder: Path) -> bool:
    return not any(".partial-" in p.name for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The files of ``ug sample ARGS`` in one process."""
    out = tmp_path_factory.mktemp("single") / "out"
    assert main(["sample", *ARGS, "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["seeds"] == [0, 1, 2, 3, 4]
    return out


def test_torchrun_writes_the_single_process_files(single, tmp_path):
    proc = torchrun(tmp_path, UG, "sample", *ARGS, "--out", "out")
    assert proc.returncode == 0, failure(proc.stderr)
    assert "3 batches over 2 processes" in proc.stdout and "one object" in proc.stdout
    assert_same_files(single, tmp_path / "out")
    assert no_partial_folders(tmp_path)


def test_accelerate_launch_writes_the_single_process_files(single, tmp_path):
    proc = accelerate_launch(tmp_path, UG, "sample", *ARGS, "--out", "out")
    assert proc.returncode == 0, failure(proc.stderr)
    assert "3 batches over 2 processes" in proc.stdout
    assert_same_files(single, tmp_path / "out")


def test_pipeline_under_torchrun_writes_the_single_process_files(tmp_path, monkeypatch):
    """Three samples in batches of one: rank 0 samples seeds 0 and 2, rank 1 seed 1."""
    from test_cli import tiny_text_pipeline

    tiny_text_pipeline().save_pretrained(tmp_path / "sd")
    argv = ["sample", "--pipeline", "sd", "--prompt", "a red disc", "--num-samples", "3",
            "--batch-size", "1", "--steps", "2", "--threads", "1", "--no-progress"]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", "single"]) == 0
    proc = torchrun(tmp_path, UG, *argv, "--out", "out")
    assert proc.returncode == 0, failure(proc.stderr)
    assert_same_files(tmp_path / "single", tmp_path / "out", n=3)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--class", "hexagon"], "--class 'hexagon' is not a class"),  # before they join
        (["--steps", "5000"], "--steps 5000 exceeds the model's 1000"),  # once the model is loaded
    ],
)
def test_a_usage_error_exits_2_on_every_process(option, message, tmp_path):
    """Found on every process, before or after the processes joined: every one says it."""
    results = env_launch(tmp_path, UG, "sample", *ARGS, *option, "--out", "out")
    for code, _, err in results:
        assert code == 2, err
        assert err.strip().splitlines()[-1].startswith(f"ug sample: error: {message}")
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_usage_error_on_one_process_stops_all(tmp_path):
    results = env_launch(tmp_path, FAULTS, "usage", "1", "sample", *ARGS, "--out", "out")
    (code0, _, err0), (code1, _, err1) = results
    assert code1 == 2, err1  # the stderr of an abort holds its stack (faulthandler)
    assert code0 == 2, err0
    assert err1.strip().splitlines()[-1] == "ug sample: error: injected usage error"
    assert err0.strip().splitlines() == ["ug sample: error: rank 1: injected usage error"]
    assert not (tmp_path / "out").exists() and no_partial_folders(tmp_path)


def test_an_error_on_one_process_stops_all_and_writes_nothing(tmp_path):
    results = env_launch(tmp_path, FAULTS, "raise", "1", "sample", *ARGS, "--out", "out")
    (code0, _, err0), (code1, _, err1) = results
    assert code1 == 1, err1
    assert code0 == 1, err0
    assert "ug sample: error: RuntimeError: injected fault" in err1
    assert "ug sample: error: rank 1: RuntimeError: injected fault" in err0
    assert "Traceback" not in err0 + err1
    assert not (tmp_path / "out").exists() and no_partial_folders(tmp_path)


def test_a_killed_process_leaves_no_folder(tmp_path):
    """Rank 1 dies (SIGKILL) while sampling: torchrun stops rank 0, nothing was written."""
    proc = torchrun(tmp_path, FAULTS, "kill", "1", "sample", *ARGS, "--out", "out")
    assert proc.returncode != 0
    assert not (tmp_path / "out").exists() and no_partial_folders(tmp_path)


def test_killed_while_writing_leaves_a_hidden_partial_folder(tmp_path):
    """Killed between the PNGs and metrics.json: no --out, only a hidden folder named partial."""
    proc = subprocess.run(
        [sys.executable, *FAULTS, "kill-writing", "0", "sample", *ARGS, "--out", "out"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == -9
    assert not (tmp_path / "out").exists()
    (partial,) = tmp_path.glob(".out.partial-*")
    assert (partial / "grid.png").is_file() and not (partial / "metrics.json").exists()


def _files(*names: str):
    def write(folder: Path) -> None:
        for name in names:
            (folder / name).write_text(f"new {name}")

    return write


def test_end_process_flushes_and_skips_the_interpreter_teardown(tmp_path):
    """A launched process ends with its status, its output flushed, and no teardown: an atexit
    handler (like the interpreter's finalization, where gloo's threads can abort) never runs."""
    marker = tmp_path / "teardown-ran"
    code = (
        "import atexit, pathlib, sys\n"
        "from ug_core.launch import end_process\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).touch)\n"
        "print('out', end=''); print('err', end='', file=sys.stderr)\n"
        "end_process(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT)  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out", "err")
    assert not marker.exists()


def test_write_atomically_into_a_new_folder(tmp_path):
    out = tmp_path / "a" / "b"
    write_atomically(out, _files("x.png", "metrics.json"))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "x.png"]
    assert no_partial_folders(tmp_path)

    def fail(folder: Path) -> None:
        (folder / "x.png").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(tmp_path / "c", fail)
    assert not (tmp_path / "c").exists() and no_partial_folders(tmp_path)


def test_write_atomically_into_an_existing_folder(tmp_path):
    """The new files replace those of the same name; other files stay; a failure changes none."""
    (tmp_path / "x.png").write_text("old")
    (tmp_path / "mine.txt").write_text("keep")
    write_atomically(tmp_path, _files("x.png", "y.png", "metrics.json"))
    assert (tmp_path / "x.png").read_text() == "new x.png"
    assert (tmp_path / "mine.txt").read_text() == "keep" and (tmp_path / "y.png").is_file()
    assert no_partial_folders(tmp_path)

    def fail(folder: Path) -> None:
        (folder / "x.png").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path, fail)
    assert (tmp_path / "x.png").read_text() == "new x.png" and no_partial_folders(tmp_path)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "x"}, "integer WORLD_SIZE, RANK and LOCAL_RANK"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "0 <= RANK < WORLD_SIZE, got WORLD_SIZE='2', RANK='2'"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 but no MASTER_ADDR and no MASTER_PORT"),
    ],
)
def test_a_broken_launch_environment_is_a_usage_error(env, message, tmp_path, monkeypatch, capsys):
    for key in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["sample", *ARGS, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1] and not (tmp_path / "out").exists()


def test_one_process_launches_change_nothing(single, tmp_path, monkeypatch):
    """torchrun --nproc_per_node=1 sets WORLD_SIZE=1: no process group, the same files."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert main(["sample", *ARGS, "--out", str(tmp_path / "out")]) == 0
    assert_same_files(single, tmp_path / "out")


def test_torchrun_without_threads_writes_what_a_plain_ug_sample_writes(tmp_path):
    """No --threads: the launcher's OMP_NUM_THREADS=1 is overridden by the thread count a single
    process uses, so the files equal a plain ``ug sample`` with the same arguments."""
    argv = ["sample", "--num-samples", "2", "--steps", "2", "--no-progress"]
    plain_env = {k: v for k, v in _env().items() if k != "OMP_NUM_THREADS"}
    command = [sys.executable, *UG, *argv, "--out", "single"]
    single = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env=plain_env, timeout=TIMEOUT
    )
    assert single.returncode == 0, failure(single.stderr)
    proc = torchrun(tmp_path, UG, *argv, "--out", "launched")
    assert proc.returncode == 0, failure(proc.stderr)
    assert_same_files(tmp_path / "single", tmp_path / "launched", n=2)
