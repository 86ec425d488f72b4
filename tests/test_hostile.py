"""Hostile input, as a user meets it: every case runs the real CLI in a
subprocess and expects one clear line on stderr, the documented exit code,
no traceback, no clobbered or half-written file and no process left behind
(issue 13)."""

import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ctxlab, python_path

FIXTURES = Path(__file__).parent / "fixtures"
HOSTILE = FIXTURES / "hostile_scenarios"
APPS = FIXTURES / "hostile_apps"
ROOT = os.geteuid() == 0
BUNDLED_NAME_LENGTH = 40  # longer than any name a user must type


def environ(**extra):
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    env.pop("FORCE_COLOR", None)
    env.update(extra)
    return {name: value for name, value in env.items() if value is not None}


def session_processes(sid: int) -> list[int]:
    """Processes still alive in session `sid` (zombies are dead)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


class Cli:
    """A running `ctxlab` in its own session, so that whatever it leaves
    behind can be found, and killed, by session id."""

    def __init__(self, *args, umask=None, file_size_limit=None, stdin=None, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, close_stdin=False, close_stdout=False, close_stderr=False, cwd=None,
                 prefix=(), **env):  # fmt: skip
        def prepare():
            if close_stdin:  # as `<&-` does
                os.close(0)
            if close_stdout:  # as `>&-` does
                os.close(1)
            if close_stderr:  # as `2>&-` does
                os.close(2)
            if umask is not None:
                os.umask(umask)
            if file_size_limit is not None:  # `ulimit -f`: a write past it fails with EFBIG
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
            # A shell starts background jobs with SIGINT ignored, and a child
            # inherits that: give ctxlab Ctrl-C as a terminal sends it.
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "ctxlab", *args], stdin=stdin, stdout=stdout, stderr=stderr, text=True,
            env=environ(**env), start_new_session=True, preexec_fn=prepare, cwd=cwd,
        )  # fmt: skip

    def without_a_reader(self, timeout=60):
        """Close our end of its stdout, as `| head -1` does once it has a
        line: (exit code, stderr)."""
        self.process.stdout.close()
        try:
            return self.process.wait(timeout), self.process.stderr.read()
        finally:
            self.kill()

    def finish(self, timeout=60):
        """(exit code, stdout, stderr); fails if it does not exit in time."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"ctxlab did not exit within {timeout}s")
        # What ctxlab killed as it exited may take a moment to die on a
        # busy machine (the kernel delivers SIGKILL when it schedules the
        # process): gone within two seconds is not left behind.
        deadline = time.monotonic() + 2
        while (left := session_processes(self.process.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.kill()
        assert not left, f"processes left behind: {left}"
        return self.process.returncode, out or "", err or ""

    def kill(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def _running(pid: int) -> bool:
    """Is `pid` a live process (not gone, nor a zombie no one reaped)?"""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cli(*args, timeout=60, **options):
    return Cli(*args, **options).finish(timeout)


def _no_durations(out: str) -> str:
    """Output with its times (`3 ms`, `in 0.20s`, `"duration_ms": 3.1`) blanked."""
    return re.sub(r"\d+(\.\d+)?\s?(ms|s)\b|\"duration_ms\": [\d.]+", "#", out)


def one_line(err: str) -> str:
    """The single error line; fails on a traceback or on several lines."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- output files ----------------------------------------------------------------------
class TestOutputFiles:
    """-o, --junit and snapshot files: regular files atomically and with the
    umask's permissions, everything else written through."""

    def test_a_new_file_gets_the_permissions_the_umask_gives(self, tmp_path):
        """With umask 022 a new report is 0644, as any tool would make it."""
        target = tmp_path / "r.json"
        code, _, err = cli("run", "bad-only", "-o", str(target), umask=0o022)
        assert code == 0, err
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert os.listdir(tmp_path) == ["r.json"]

    def test_junit_gets_the_umask_permissions_too(self, tmp_path):
        """--junit follows the same rule as -o."""
        target = tmp_path / "junit.xml"
        code, _, err = cli("check", "--junit", str(target), "--scenarios", str(FIXTURES / "drifting_scenarios"),
                           umask=0o027)  # fmt: skip
        assert code == 1, err
        assert stat.S_IMODE(target.stat().st_mode) == 0o640

    @pytest.mark.parametrize("spelled", ["same", "symlink", "hard link"])
    def test_an_output_that_is_the_baseline_is_refused_and_the_baseline_kept(self, tmp_path, saved_trace, spelled):
        """`check --baseline s.json --junit s.json` turned the snapshot into
        JUnit XML, and `trace --baseline t.json -o t.json` replaced the trace
        it compared with: one line, exit 2, both files as they were, however
        the second name reaches the file."""
        snapshot, trace = tmp_path / "snap.json", tmp_path / "trace.json"
        snapshot.write_text(json.dumps(report_with()))
        trace.write_bytes(saved_trace.read_bytes())
        trace_command = ("trace", "clean:app", "--app-dir", str(TRACE_APPS), "-o")
        for baseline, command in ((snapshot, ("check", "--junit")), (trace, trace_command)):
            other = tmp_path / f"other-{baseline.name}"
            if spelled == "symlink":
                other.symlink_to(baseline)
            elif spelled == "hard link":
                os.link(baseline, other)
            output = baseline if spelled == "same" else other
            before = baseline.read_bytes()
            code, out, err = cli(*command, str(output), "--baseline", str(baseline))
            assert (code, out) == (2, ""), err
            assert one_line(err) == (
                f"ctxlab: error: {output} is also the --baseline file, which the output would replace; write it elsewhere"
            )
            assert baseline.read_bytes() == before

    @pytest.mark.parametrize("existing", [False, True])
    def test_an_output_beside_the_baseline_is_written(self, tmp_path, saved_trace, existing):
        """Another file, new or already there, is no baseline: written."""
        snapshot, trace = tmp_path / "snap.json", tmp_path / "trace.json"
        snapshot.write_text(json.dumps(report_with()))
        trace.write_bytes(saved_trace.read_bytes())
        junit, report = tmp_path / "junit.xml", tmp_path / "new-trace.json"
        if existing:
            junit.write_text("old")
            report.write_text("old")
        code, _, err = cli("check", "--junit", str(junit), "--baseline", str(snapshot))
        assert code in (0, 1) and junit.read_text().startswith("<?xml"), err
        code, _, err = cli(
            "trace", "clean:app", "--app-dir", str(TRACE_APPS), "-o", str(report), "--baseline", str(trace)
        )
        assert code == 0 and json.loads(report.read_text())["app"] == "clean:app", err

    @pytest.mark.parametrize("mode", [0o444, 0o555])
    def test_a_read_only_file_is_refused_and_kept(self, tmp_path, mode):
        """A read-only target is refused before running (exit 2), even for
        root, and even if it may be executed."""
        target = tmp_path / "r.json"
        target.write_text("keep me")
        target.chmod(mode)
        code, out, err = cli("run", "bad-only", "-o", str(target))
        assert code == 2 and out == ""
        assert "read-only" in one_line(err)
        assert target.read_text() == "keep me" and stat.S_IMODE(target.stat().st_mode) == mode

    def test_a_symlink_is_written_through(self, tmp_path):
        """-o through a symlink writes the file it points to and keeps the link."""
        real, link = tmp_path / "real.json", tmp_path / "link.json"
        real.write_text("old")
        link.symlink_to(real)
        code, _, err = cli("run", "bad-only", "-o", str(link))
        assert code == 0, err
        assert link.is_symlink() and json.loads(real.read_text())["scenarios"][0]["name"] == "bad-only"
        assert sorted(os.listdir(tmp_path)) == ["link.json", "real.json"]

    def test_a_fifo_is_written_through(self, tmp_path):
        """-o into a FIFO feeds its reader and leaves the FIFO a FIFO."""
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        received = []
        reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
        reader.start()
        code, _, err = cli("run", "bad-only", "-o", str(fifo))
        reader.join(10)
        assert code == 0, err
        assert stat.S_ISFIFO(fifo.lstat().st_mode)
        assert json.loads(received[0])["scenarios"][0]["name"] == "bad-only"

    @pytest.mark.skipif(not ROOT, reason="making a device node needs root")
    def test_a_character_device_stays_a_device(self, tmp_path):
        """-o to a null device writes into it, never replaces it with a file."""
        null = tmp_path / "null"
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        code, _, err = cli("run", "bad-only", "-o", str(null))
        assert code == 0, err
        assert stat.S_ISCHR(null.lstat().st_mode)
        assert os.listdir(tmp_path) == ["null"]

    @pytest.mark.skipif(not ROOT, reason="making a device node needs root")
    def test_a_full_device_is_an_error(self, tmp_path):
        """ENOSPC (as /dev/full gives) is one line and exit 2, and the device stays."""
        full = tmp_path / "full"
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        code, _, err = cli("run", "bad-only", "-o", str(full))
        assert code == 2
        assert "No space left on device" in one_line(err)
        assert stat.S_ISCHR(full.lstat().st_mode) and os.listdir(tmp_path) == ["full"]

    @pytest.mark.skipif(not ROOT, reason="only root could clobber /dev/null")
    def test_dev_null_and_dev_full_as_root(self):
        """The real /dev/null stays a device; the real /dev/full is an error."""
        code, _, err = cli("run", "bad-only", "-o", "/dev/null")
        assert code == 0, err
        assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
        code, _, err = cli("run", "bad-only", "-o", "/dev/full")
        assert code == 2 and "No space left on device" in one_line(err)
        assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)
        assert not [name for name in os.listdir("/dev") if name.startswith((".null.", ".full."))]

    def test_dev_stdout_is_written_through(self):
        """-o /dev/stdout prints the report on stdout and leaves /dev/stdout alone."""
        before = os.readlink("/dev/stdout")
        code, out, err = cli("run", "bad-only", "-o", "/dev/stdout")
        assert code == 0, err
        assert '"schema_version": 1' in out
        assert os.path.islink("/dev/stdout") and os.readlink("/dev/stdout") == before

    def test_a_directory_or_a_path_through_a_file_is_refused(self, tmp_path):
        """-o naming a directory, or a path whose parent is a file: one line, exit 2."""
        (tmp_path / "reports").mkdir()
        (tmp_path / "notes").write_text("keep me")
        code, _, err = cli("run", "bad-only", "-o", str(tmp_path / "reports"))
        assert code == 2 and one_line(err) == f"ctxlab: error: cannot write {tmp_path / 'reports'}: it is a directory"
        code, _, err = cli("run", "bad-only", "-o", str(tmp_path / "notes" / "r.json"))
        assert (
            code == 2
            and one_line(err) == f"ctxlab: error: cannot write {tmp_path / 'notes' / 'r.json'}: Not a directory"
        )
        assert sorted(os.listdir(tmp_path)) == ["notes", "reports"] and not os.listdir(tmp_path / "reports")
        assert (tmp_path / "notes").read_text() == "keep me"

    @pytest.mark.parametrize(
        "args, option",
        [
            (("run", "bad-only", "-o"), "'-o' / '--output'"),
            (("snapshot", "-o"), "'-o' / '--output'"),
            (("check", "--junit"), "'--junit'"),
            (("check", "--baseline"), "'--baseline'"),
            (("trace", "threads:app", "--app-dir", str(APPS), "-o"), "'-o' / '--output'"),
            (("diff",), "'FILE'"),
        ],
    )
    def test_an_empty_file_name_is_refused(self, tmp_path, args, option):
        """`-o "$UNSET"`: pathlib reads "" as ".", and the user heard about
        a directory they never named.  Nothing runs and nothing is written."""
        code, out, err = cli(*args, "", cwd=tmp_path)
        assert code == 2 and not out
        assert one_line(err) == f"ctxlab: error: Invalid value for {option}: a file name cannot be empty"
        assert not os.listdir(tmp_path)

    def test_a_dangling_symlink_names_the_missing_directory(self, tmp_path):
        """-o through a symlink into a directory that does not exist names
        that directory, not the link's own (which is writable)."""
        link = tmp_path / "report.json"
        link.symlink_to(tmp_path / "gone" / "report.json")
        code, _, err = cli("trace", "threads:app", "--app-dir", str(APPS), "-o", str(link))
        assert code == 2
        assert one_line(err) == f"ctxlab: error: cannot write {link}: {tmp_path / 'gone'} is not a writable directory"
        assert os.listdir(tmp_path) == ["report.json"] and link.is_symlink()

    def test_dev_stdout_into_a_closed_pipe_ends_quietly(self):
        """`ctxlab snapshot -o /dev/stdout | head -1` (snapshot prints nothing
        else): the reader went away, as when the report is printed: quietly,
        141, not a usage error."""
        code, err = Cli("snapshot", "-o", "/dev/stdout").without_a_reader()
        assert err == "" and code == 141

    def test_a_dash_is_stdout_and_nothing_else_goes_there(self, tmp_path):
        """`snapshot -o -` prints the snapshot, and only it, on stdout, where
        `diff -` reads it back; a directory named `-` is not what it means."""
        (tmp_path / "-").mkdir()
        code, out, err = cli("snapshot", "-o", "-", "--server", "asgi", cwd=tmp_path)
        assert code == 0 and one_line(err).startswith("wrote stdout: 6"), err
        assert json.loads(out)["summary"]["total"] == len(json.loads(out)["scenarios"])
        assert os.listdir(tmp_path) == ["-"] and not os.listdir(tmp_path / "-")
        (tmp_path / "snap.json").write_text(out)
        with open(tmp_path / "snap.json") as snapshot:
            code, out, err = cli("diff", "-", stdin=snapshot)
        assert code == 0 and out.splitlines()[-1] == "no changes", err
        code, _, err = cli("diff", "-", stdin=subprocess.DEVNULL)
        assert code == 2 and one_line(err).startswith("ctxlab: error: stdin is empty; ")

    @pytest.mark.parametrize(
        "args, holds",
        [
            (("run", "bad-only", "--json", "-o", "-"), "the report (--json prints it there as JSON)"),
            (("check", "--junit", "-"), "check's lines"),
            (("trace", "threads:app", "--app-dir", str(APPS), "-o", "-"), "the trace (--json prints it there as JSON)"),
        ],
    )
    def test_a_dash_where_stdout_holds_the_report_is_refused(self, args, holds):
        """`run --json -o -` printed two JSON documents, `check --junit -`
        XML amid its lines: one line, exit 2, before anything runs."""
        code, out, err = cli(*args)
        assert code == 2 and out == ""
        assert one_line(err) == f"ctxlab: error: '-' (stdout) already holds {holds}; write this output to a file"

    def test_a_dash_into_a_full_device_or_a_closed_pipe(self):
        """`-o - > /dev/full`: one line, exit 2; `-o - | head -1`: quietly, 141."""
        with open("/dev/full", "w") as full:
            code, _, err = cli("snapshot", "-o", "-", "--server", "asgi", stdout=full)
        assert code == 2 and one_line(err) == "ctxlab: error: cannot write to stdout: No space left on device"
        code, err = Cli("snapshot", "-o", "-").without_a_reader()
        assert err == "" and code == 141

    def test_a_write_that_fails_midway_leaves_no_file(self, tmp_path):
        """A file-size limit (`ulimit -f`) stops the write: one line, exit 2,
        the old report kept and no temporary file left beside it."""
        target = tmp_path / "r.json"
        target.write_text("keep me")
        code, _, err = cli("run", "bad-only", "-o", str(target), file_size_limit=100)
        assert code == 2 and one_line(err) == f"ctxlab: error: cannot write {target}: File too large"
        assert os.listdir(tmp_path) == ["r.json"] and target.read_text() == "keep me"

    def test_dev_stdout_redirected_to_a_file_is_written_into_that_file(self, tmp_path):
        """`ctxlab run -o /dev/stdout > out.txt`: the report goes into the
        shell's file (opened for writing, as `tee /dev/stdout` does), which
        is never replaced by another file."""
        shells = tmp_path / "out.txt"
        with shells.open("w") as stdout:
            inode = os.fstat(stdout.fileno()).st_ino
            code, _, err = cli("run", "bad-only", "-o", "/dev/stdout", stdout=stdout)
        assert code == 0, err
        assert shells.stat().st_ino == inode and os.listdir(tmp_path) == ["out.txt"]
        assert '"schema_version": 1' in shells.read_text()

    def test_snapshot_into_a_read_only_file_is_refused(self, tmp_path):
        """snapshot -o refuses a read-only file before running anything."""
        target = tmp_path / "snap.json"
        target.write_text("keep me")
        target.chmod(0o444)
        code, _, err = cli("snapshot", "-o", str(target))
        assert code == 2 and "read-only" in one_line(err) and target.read_text() == "keep me"


@pytest.fixture
def read_only(tmp_path):
    """`read_only(*directories)`: the command prefix that runs ctxlab with
    those directories read-only.  Root writes through permission bits, so
    for root they are bind-mounted read-only in a mount namespace of the
    command's own (skipped where the namespace is not allowed)."""

    def make(*directories):
        if not ROOT:
            for directory in directories:
                directory.chmod(0o555)
            return ()
        if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root, and no mount namespace to make a directory read-only in")
        mounts = " && ".join(f"mount --bind {d} {d} && mount -o remount,bind,ro {d}" for d in directories)
        return ("unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh")

    yield make
    for directory in tmp_path.iterdir():
        directory.chmod(0o755)


class TestReadOnly:
    """A working directory or a cache ctxlab cannot write: what needs no
    file works, what does says which directory in one line, exit 2."""

    @pytest.fixture
    def places(self, tmp_path):
        cwd, cache = tmp_path / "cwd", tmp_path / "cache"
        cwd.mkdir(), cache.mkdir()
        return cwd, cache

    @pytest.mark.parametrize(
        "args, file",
        [
            (("run", "bad-only", "-o", "r.json"), "r.json"),
            (("snapshot", "-o", "s.json"), "s.json"),
            (("check", "--junit", "j.xml"), "j.xml"),
            (("trace", "threads:app", "--app-dir", str(APPS), "-o", "t.json"), "t.json"),
        ],
    )
    def test_an_output_file_in_a_read_only_directory(self, read_only, places, args, file):
        cwd, cache = places
        code, out, err = cli(*args, cwd=cwd, prefix=read_only(cwd, cache), CTXLAB_CACHE=str(cache))
        assert code == 2 and out == ""
        assert one_line(err) == f"ctxlab: error: cannot write {file}: . is not a writable directory"
        assert not os.listdir(cwd)

    def test_what_writes_no_file_works_there(self, read_only, places):
        """run, and list of a scenario directory (whose index is only a cache)."""
        cwd, cache = places
        (cwd / "mine.py").write_text(SCENARIO.format(name="mine", summary="s"))
        prefix = read_only(cwd, cache)
        code, out, err = cli("run", "bad-only", cwd=cwd, prefix=prefix, CTXLAB_CACHE=str(cache))
        assert code == 0 and "1 passed" in out, err
        code, out, err = cli("list", "--scenarios", ".", cwd=cwd, prefix=prefix, CTXLAB_CACHE=str(cache))
        assert code == 0 and "mine" in out and err == ""
        assert os.listdir(cwd) == ["mine.py"] and not os.listdir(cache)

    def test_matrix_with_a_read_only_cache_is_refused_before_any_build(self, read_only, places):
        cwd, cache = places
        code, out, err = cli("matrix", "--with", "uvicorn==0.44.0", "--with", "uvicorn==0.45.0", cwd=cwd,
                             prefix=read_only(cache), CTXLAB_CACHE=str(cache))  # fmt: skip
        assert code == 2 and out == ""
        assert one_line(err).startswith(f"ctxlab: error: cannot build environments in {cache / 'envs'}: ")
        assert one_line(err).endswith("; set CTXLAB_CACHE to a writable directory")
        assert "[Errno" not in err  # the system's words, not the exception's repr
        assert not os.listdir(cache)


# -- hangs -------------------------------------------------------------------------------


class TestHangs:
    """A scenario that hangs in any way becomes `error` after its timeout;
    the others still run, the report is printed and the process exits."""

    @pytest.mark.parametrize("name", ["def-sleeps-forever", "async-time-sleep", "factory-never-returns"])
    def test_a_hang_is_an_error_and_the_rest_runs(self, name):
        """The hung scenario is an error that says it timed out; `fine` passes."""
        code, out, err = cli("run", name, "fine", "--json", "--scenarios", str(HOSTILE))
        assert code == 3, err
        status = {s["name"]: (s["status"], s["error"]) for s in json.loads(out)["scenarios"]}
        assert status[name][0] == "error" and "timed out after 1s" in status[name][1]
        assert status["fine"] == ("pass", None)

    def test_what_a_hung_app_printed_is_not_lost_with_it(self):
        """The worker is killed for the hang: what the app printed before
        must have left its buffer already."""
        code, out, err = cli("run", "prints-then-hangs", "--json", "--scenarios", str(HOSTILE))
        assert code == 3 and json.loads(out)["scenarios"][0]["status"] == "error"
        assert err.splitlines().count("about to block") == 1

    def test_a_process_pool_in_a_scenario_works(self):
        """A scenario worker may start processes: a ProcessPoolExecutor in the
        endpoint computes (2**10 is 1024), and neither the worker nor the
        pool's processes outlive ctxlab."""
        code, out, err = cli("run", "process-pool", "fine", "--json", "--scenarios", str(HOSTILE))
        assert code == 0, err
        scenarios = json.loads(out)["scenarios"]
        assert [(s["status"], s["error"]) for s in scenarios] == [("pass", None), ("pass", None)]
        assert [o["observed"] for o in scenarios[0]["observations"]] == [1024]

    def test_a_non_daemon_thread_does_not_keep_ctxlab_alive(self):
        """An app that leaves a thread running still lets ctxlab exit."""
        code, out, err = cli("run", "starts-a-thread", "fine", "--json", "--scenarios", str(HOSTILE))
        assert code == 0, err
        assert [s["status"] for s in json.loads(out)["scenarios"]] == ["pass", "pass"]

    def test_all_hangs_in_one_run_print_the_table_report(self):
        """Every hanging scenario in one run: the table report and the summary line."""
        code, out, err = cli("run", "--tag", "hang", "--scenarios", str(HOSTILE))
        assert code == 3 and "Traceback" not in err
        assert out.strip().splitlines()[-1].startswith("2 passed, 3 errors")

    def test_a_module_that_never_finishes_importing(self):
        """An import that hangs is that scenario's error after the timeout
        its source declares; the rest runs, and explain says so and exits."""
        code, out, err = cli("run", "import-hangs", "fine", "--json", "--scenarios", str(HOSTILE))
        assert code == 3, err
        status = {s["name"]: (s["status"], s["error"]) for s in json.loads(out)["scenarios"]}
        assert status["import-hangs"] == ("error", "timed out after 1s importing its module (killed)")
        assert status["fine"] == ("pass", None)
        code, _, err = cli("explain", "import-hangs", "--scenarios", str(HOSTILE))
        assert code == 3 and "timed out after 1s importing its module" in one_line(err)
        code, _, err = cli("serve", "import-hangs", "--port", "0", "--scenarios", str(HOSTILE))
        assert code == 3 and "timed out after 1s importing its module" in one_line(err)

    @pytest.mark.parametrize("command", ["run", "explain", "serve"])
    def test_a_module_that_ends_the_process_while_importing(self, command):
        """os._exit at import ends a child, never ctxlab: one line, exit 3."""
        code, out, err = cli(command, "import-exits", *(["--port", "0"] if command == "serve" else []),
                             "--scenarios", str(HOSTILE))  # fmt: skip
        assert code == 3, (out, err)
        assert "crashed importing its module: exited with status 9" in (out if command == "run" else one_line(err))

    def test_explain_of_a_hang_is_an_error_line(self):
        """explain of a hanging scenario shows the timeout, then exits."""
        code, out, err = cli("explain", "async-time-sleep", "--scenarios", str(HOSTILE))
        assert "Traceback" not in err and "timed out after 1s" in out

    def test_probe_of_a_factory_that_never_returns(self):
        """probe --factory of a factory that blocks: one line, exit 2."""
        code, _, err = cli("probe", "factory_hangs:create_app", "--factory", "--app-dir", str(APPS), "--timeout", "1")
        assert code == 2 and "did not return" in one_line(err)


# -- signals -----------------------------------------------------------------------------
def _ppid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None  # the process ended while we looked


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def start_and_wait(tmp_path, *args, **env):
    """Start ctxlab and wait until the app under test handles requests."""
    marker = tmp_path / "started"
    running = Cli(*args, CTXLAB_TEST_MARKER=str(marker), **env)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert running.process.poll() is None, running.process.communicate()
        assert time.monotonic() < deadline, "the app never got a request"
        time.sleep(0.05)
    return running


class TestSignals:
    """Ctrl-C and SIGTERM at any moment: the partial report, 130 or 143, and
    nothing left behind."""

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
    def test_kill_9_takes_the_worker_with_it(self, tmp_path):
        """ctxlab killed outright: its worker, stuck in a scenario that blocks
        its loop for 120 s, is gone too (the kernel's word, from /proc)."""
        running = start_and_wait(tmp_path, "run", "blocks-the-loop-long", "--scenarios", str(HOSTILE))
        parent = running.process.pid
        children = [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat") if _ppid(stat) == parent]
        assert children, "the worker was not found"
        running.process.kill()
        running.process.wait(10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in children):
            assert time.monotonic() < deadline, f"worker {children} outlived ctxlab"
            time.sleep(0.05)

    def test_without_a_shell_ctxlab_runs_all_the_same(self):
        """A container with no /bin/sh (distroless): the child cannot leave
        its undertaker shell behind, and runs without it.  Here /bin/sh is
        made a file that cannot be executed, in a mount namespace of the
        command's own."""
        if not ROOT or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
            pytest.skip("needs root and a mount namespace to hide /bin/sh in")
        prefix = ("unshare", "-m", "sh", "-c", 'mount --bind /dev/null /bin/sh && exec "$@"', "sh")
        for args, last in (
            (("run", "bad-only"), "1 passed in #"),  # the worker
            (("trace", "clean:app", "--app-dir", str(TRACE_APPS)), "no finding in 2 request(s), 26 events"),  # a child
        ):
            code, out, err = cli(*args, prefix=prefix)
            assert (code, err) == (0, "") and _no_durations(out).strip().splitlines()[-1] == last

    @pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
    def test_a_signal_while_ctxlab_is_still_importing(self, tmp_path, signum, code):
        """The first tenth of a second is spent importing typer and the rest,
        before the CLI can catch anything: Ctrl-C there printed
        KeyboardInterrupt's traceback.  (SIGTERM there ends ctxlab by its
        default action, which a shell reports as 143: nothing was started.)
        A stand-in typer holds ctxlab inside that import."""
        running = start_and_wait(tmp_path, "list", PYTHONPATH=python_path(FIXTURES / "slow_import"))
        running.process.send_signal(signum)
        assert running.finish(timeout=10) == (code, "", "")

    def test_an_interrupt_inside_code_run_from_a_string_still_exits_130(self, tmp_path):
        """CPython up to 3.13 takes a KeyboardInterrupt that ends string-exec'd
        code (dataclasses and namedtuple make their methods so) for one never
        handled, and under `python -m` kills itself by SIGINT after exiting:
        a SIGTERM that landed there ended ctxlab by SIGINT, not 143, about
        once in thirty runs.  The stand-in typer holds ctxlab inside an exec."""
        running = start_and_wait(
            tmp_path, "list", PYTHONPATH=python_path(FIXTURES / "slow_import"), CTXLAB_TEST_HOLD_IN_EXEC="1"
        )
        running.process.send_signal(signal.SIGINT)
        assert running.finish(timeout=10) == (130, "", "")

    @pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
    def test_kill_9_takes_the_apps_processes_with_it(self, tmp_path, method):
        """ctxlab killed outright while the app waits on a ProcessPoolExecutor
        (started in each way multiprocessing can): the pool's processes, and
        spawn's resource tracker, die too; they were orphaned and ran on,
        since the kernel kills only the worker with ctxlab."""
        # With no PATH of the user's to find anything on.
        running = start_and_wait(
            tmp_path, "run", "process-pool-hangs", "--scenarios", str(HOSTILE), CTXLAB_TEST_START_METHOD=method, PATH=""
        )
        started = session_processes(running.process.pid)
        assert len(started) >= 4, started  # ctxlab, its worker and the pool's two processes at least
        running.process.kill()
        running.process.wait(10)
        deadline = time.monotonic() + 10
        while left := session_processes(running.process.pid):
            assert time.monotonic() < deadline, f"{left} outlived ctxlab"
            time.sleep(0.05)

    @pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
    def test_during_5000_concurrent_requests(self, tmp_path, signum, code):
        """A signal during 5,000 concurrent requests ends the run with the
        report of what finished."""
        running = start_and_wait(tmp_path, "run", "fine", "many-slow-requests", "--scenarios", str(HOSTILE))
        running.process.send_signal(signum)
        got, out, err = running.finish(timeout=5)
        assert got == code and "Traceback" not in err
        assert "fine" in out and "PASS" in out
        assert "interrupted" in out.strip().splitlines()[-1]

    def test_ctrl_c_while_the_event_loop_is_blocked(self, tmp_path):
        """Ctrl-C reaches ctxlab even while the app blocks the event loop."""
        running = start_and_wait(tmp_path, "run", "blocks-the-loop-long", "--scenarios", str(HOSTILE))
        running.process.send_signal(signal.SIGINT)
        code, _, err = running.finish(timeout=5)
        assert code == 130 and "Traceback" not in err

    @pytest.mark.parametrize(
        "command",
        [("run", "many-slow-requests", "-o"), ("snapshot", "--server", "asgi", "-o"), ("check", "--junit")],
        ids=["run", "snapshot", "check"],
    )
    @pytest.mark.parametrize("colors", [{}, {"NO_COLOR": None, "FORCE_COLOR": "1"}])
    def test_interrupted_output_file_is_not_written(self, tmp_path, colors, command):
        """An interrupted run writes no -o, snapshot or JUnit file (it would
        look complete: a JUnit file of the scenarios that finished reads as
        a passing check) and says so, printing the path literally (not even
        coloured as a path)."""
        target = tmp_path / "[bold]report.json"
        running = start_and_wait(tmp_path, *command, str(target), "--scenarios", str(HOSTILE), **colors)
        running.process.send_signal(signal.SIGINT)
        code, _, err = running.finish(timeout=5)
        assert code == 130 and one_line(err) == f"interrupted: {target} not written"
        assert sorted(os.listdir(tmp_path)) == ["started"]

    @pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
    def test_diff_interrupted_lists_no_changes(self, tmp_path, signum, code):
        """diff stopped while it runs the snapshot's scenarios again: 130 or
        143, and no list of changes, which would read the scenarios not yet
        run as removed."""
        snapshot = tmp_path / "snap.json"
        snapshot.write_text(json.dumps(report_with(scenarios__0__name="many-slow-requests")))
        running = start_and_wait(tmp_path, "diff", str(snapshot), "--scenarios", str(HOSTILE))
        running.process.send_signal(signum)
        got, out, err = running.finish(timeout=5)
        assert got == code and "Traceback" not in err and "change" not in out, (out, err)

    @pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
    def test_trace_interrupted_says_its_file_is_not_written(self, tmp_path, signum, code):
        """trace -o interrupted mid-request: no file, and it says so, as run -o does."""
        target = tmp_path / "trace.json"
        running = start_and_wait(tmp_path, "trace", "slow:app", "--app-dir", str(APPS), "-o", str(target))
        running.process.send_signal(signum)
        got, out, err = running.finish(timeout=5)
        assert got == code and out == "" and one_line(err) == f"interrupted: {target} not written"
        assert sorted(os.listdir(tmp_path)) == ["started"]

    def test_sigterm_during_serve(self, tmp_path):
        """serve stops on SIGTERM with 143."""
        running = Cli("serve", "bad-only", "--port", "0")
        deadline = time.monotonic() + 60
        line = ""
        while "serving" not in line and time.monotonic() < deadline:
            line = running.process.stdout.readline()
        running.process.send_signal(signal.SIGTERM)
        code, _, err = running.finish(timeout=5)
        assert code == 143 and "Traceback" not in err


# -- malformed files -------------------------------------------------------------------------
def report_with(**changes):
    scenario = {"name": "bad-only", "status": "pass", "duration_ms": 1.0, "error": None, "onion": [],
                "observations": [{"seq": 1, "request": 1, "probe": "bad.after", "var": "context", "observed": None}]}  # fmt: skip
    document = {"schema_version": 1, "tool": {"name": "ctxlab", "version": "0.1.0"},
                "environment": {"python": "3.11.7", "packages": {}}, "server": "asgi", "spec_version": None,
                "scenarios": [scenario], "summary": {}}  # fmt: skip
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = document
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value
    return document


SCENARIO = """
from ctxlab.scenario import scenario


@scenario("{name}", summary="{summary}", expect={{}})
def build():
    async def app(scope, receive, send):
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": b""}})

    return app
"""

MALFORMED = {
    "server is a number": report_with(server=5),
    "unknown server": report_with(server="iis"),
    "unknown scenario server": report_with(scenarios__0__server="iis"),
    "spec_version is a list": report_with(spec_version=[2, 4]),
    "spec_version is not MAJOR.MINOR": report_with(spec_version="two"),
    "spec_version has a newline after it": report_with(spec_version="2.4\n"),
    "spec_version in other digits": report_with(spec_version="\u0663.\u0664"),
    "environment is a string": report_with(environment="linux"),
    "packages is a list": report_with(environment__packages=["starlette"]),
    "status is a number": report_with(scenarios__0__status=5),
    "status is unknown": report_with(scenarios__0__status="fine"),
    "request is a string": report_with(scenarios__0__observations__0__request="one"),
    "probe is a number": report_with(scenarios__0__observations__0__probe=5),
    "var is null": report_with(scenarios__0__observations__0__var=None),
    "scenarios is an object": report_with(scenarios={}),
    "name is a list": report_with(scenarios__0__name=["bad-only"]),
    "no scenario": report_with(scenarios=[]),
    "a scenario twice": report_with(scenarios=report_with()["scenarios"] * 2),
}

REFUSED_BEFORE = {"scenarios is an object", "name is a list"}


TRACE_APPS = FIXTURES / "trace_apps"


@pytest.fixture(scope="module")
def saved_trace(tmp_path_factory):
    """A trace saved as a user saves one: `trace --json -o FILE`."""
    path = tmp_path_factory.mktemp("saved") / "trace.json"
    code, _, err = cli("trace", "clean:app", "--app-dir", str(TRACE_APPS), "--json", "-o", str(path))
    assert code == 0, err
    return path


class TestMalformedFiles:
    """A snapshot or baseline that cannot be used: one line, exit 2, never 1."""

    @pytest.mark.parametrize("case", list(MALFORMED))
    def test_wrong_types_and_unknown_values(self, tmp_path, case):
        """Each wrongly typed or unknown field is named in one line."""
        path = tmp_path / "snap.json"
        path.write_text(json.dumps(MALFORMED[case]))
        code, out, err = cli("diff", str(path))
        assert code == 2, (out, err)
        assert str(path) in one_line(err)

    @pytest.mark.parametrize(
        "case, said",
        [
            ("no scenario", "scenarios is [], expected a list of scenario results, one at least"),
            ("a scenario twice", "scenarios[1] is a second result for 'bad-only'"),
        ],
    )
    def test_a_baseline_that_would_compare_nothing_or_hide_a_result(self, tmp_path, case, said):
        """An empty snapshot made diff and check --baseline pass having
        compared nothing; a second result for a scenario hid the first."""
        path = tmp_path / "snap.json"
        path.write_text(json.dumps(MALFORMED[case]))
        for command in (("diff", str(path)), ("check", "--baseline", str(path))):
            code, out, err = cli(*command)
            assert (code, out) == (2, "") and one_line(
                err
            ) == f"ctxlab: error: {path} is a malformed ctxlab report: {said}"

    def test_a_scenario_that_declares_the_wrong_kind_of_value(self, tmp_path):
        """A user's scenario module with `tags=5` (read without importing):
        `list` printed a traceback; one line, exit 2.  With `expect=5` (read
        as it imports): the run crashed in ctxlab's comparison; it is that
        scenario's error, said by name."""
        app = "def f():\n    return None\n"
        (tmp_path / "tags.py").write_text(f"@scenario('tags-five', summary='s', tags=5, expect={{}})\n{app}")
        code, out, err = cli("list", "--scenarios", str(tmp_path))
        assert (code, out) == (2, "")
        assert one_line(err) == "ctxlab: error: tags.py:1: the scenario's tags must be a list of strings, not 5"
        (tmp_path / "tags.py").unlink()
        (tmp_path / "expect.py").write_text(
            f"from ctxlab.scenario import scenario\n\n\n@scenario('expect-five', summary='s', expect=5)\n{app}"
        )
        code, out, err = cli("run", "expect-five", "--json", "--scenarios", str(tmp_path))
        assert code == 3 and "Traceback" not in err, err
        (result,) = json.loads(out)["scenarios"]
        assert (result["status"], result["error"]) == (
            "error",
            "cannot load: ScenarioError: scenario 'expect-five': expect must map each probe label to"
            " {variable name: value}, not 5",
        )

    @pytest.mark.parametrize("case", ["unknown scenario server", "request is a string"])
    def test_a_malformed_baseline_is_refused_before_running(self, tmp_path, case):
        """check --baseline reads the file the way diff does, before running anything."""
        path = tmp_path / "snap.json"
        path.write_text(json.dumps(MALFORMED[case]))
        code, out, err = cli("check", "--baseline", str(path))
        assert code == 2 and out == "" and str(path) in one_line(err)

    @pytest.mark.parametrize(
        "field, value, said",
        [
            ("app", 5, "app is 5, expected MODULE:ATTR"),
            ("events", [1, 2], "events is [1, 2], expected a list of events"),
            ("events", [{}], "events is [{}], expected a list of events"),
            ("findings", ["lost"], "findings is ['lost'], expected a list of findings"),
            ("options", [], "options is [], expected an object"),
            ("options.requests", "two", "options.requests is 'two', expected a number of requests"),
            ("options.path", 5, "options.path is 5, expected a path starting with /"),
            # What a request could not carry, or count (these were tracebacks too).
            ("options.requests", 10**20, f"options.requests is {10**20}, expected a number of requests"),
            ("options.path", "/\udcff", "options.path is '/\\udcff', expected a path starting with /, in text"),
            ("options.data", "\udcff", "options.data is '\\udcff', expected a string a request can carry"),
            ("options.headers", [["x-a", "\u20ac"]], "options.headers is [['x-a', '\u20ac']], expected a list of"),
            ("options.method", "G E T", "options.method is 'G E T', expected an HTTP method"),
            ("options.headers", "X-A: 1", "options.headers is 'X-A: 1', expected a list of [name, value] pairs"),
            ("options.vars", "user", "options.vars is 'user', expected a list of variable names"),
            ("options.app_dir", 5, "options.app_dir is 5, expected a directory"),
            ("options.timeout", "30", "options.timeout is '30', expected seconds"),
            ("options.timeout", 0, "options.timeout is 0, expected seconds"),
            ("options.timeout", 1e309, "options.timeout is inf, expected seconds"),
        ],
    )
    @pytest.mark.parametrize("command", ["diff", "baseline"])
    def test_a_saved_trace_with_a_wrong_field(self, tmp_path, saved_trace, command, field, value, said):
        """A saved trace is checked field by field as a snapshot is (these
        were tracebacks, exit 1, which reads as a change): one line naming
        the field, exit 2."""
        document = json.loads(saved_trace.read_text())
        *parents, last = field.split(".")
        holder = document
        for part in parents:
            holder = holder[part]
        holder[last] = value
        path, (code, out, err) = self.compared_with(tmp_path, document, command)
        assert code == 2 and out == ""
        assert one_line(err).startswith(f"ctxlab: error: {path} is a malformed trace: {said}")

    @staticmethod
    def compared_with(tmp_path, document, command):
        """Save `document` as a trace and give it to `diff`, or to `trace
        --baseline`: its path, and what ctxlab did."""
        path = tmp_path / "trace.json"
        path.write_text(json.dumps(document))
        args = (
            ("diff", str(path))
            if command == "diff"
            else ("trace", "clean:app", "--app-dir", str(TRACE_APPS), "--baseline", str(path))
        )
        return path, cli(*args)

    @pytest.mark.parametrize("command", ["diff", "baseline"])
    @pytest.mark.parametrize("missing", ["schema_version", "app", "options"])
    def test_a_file_that_is_no_saved_trace(self, tmp_path, saved_trace, command, missing):
        """A trace without one of the fields every trace has: not a trace,
        one line, exit 2 (a KeyError's traceback if only `events` were checked)."""
        document = json.loads(saved_trace.read_text())
        del document[missing]
        path, (code, out, err) = self.compared_with(tmp_path, document, command)
        assert code == 2 and out == ""
        assert one_line(err) == (
            f"ctxlab: error: {path} is not a saved trace; make one with 'ctxlab trace MODULE:ATTR --json -o {path}'"
        )

    def test_a_truncated_snapshot(self, tmp_path):
        """Half a snapshot is not JSON: one line, exit 2."""
        path = tmp_path / "snap.json"
        text = json.dumps(report_with(), indent=2)
        path.write_text(text[: len(text) // 2])
        code, _, err = cli("diff", str(path))
        assert code == 2 and "is not JSON" in one_line(err)

    def test_a_huge_snapshot_is_refused_without_reading_it(self, tmp_path):
        """A 200 MB file (sparse on disk) is refused by its size."""
        path = tmp_path / "huge.json"
        with path.open("wb") as handle:
            handle.truncate(200 * 1024 * 1024)
        code, _, err = cli("diff", str(path), timeout=30)
        assert code == 2 and "too large" in one_line(err)

    @pytest.mark.parametrize("stdin", ["/dev/stdin", "-"])
    @pytest.mark.parametrize("saved", ["report", "trace"])
    def test_a_saved_file_read_from_a_pipe(self, saved_trace, saved, stdin):
        """`cat snap.json | ctxlab diff /dev/stdin` (or `diff -`, or `diff
        <(...)`): a pipe can be read once, and diff read it twice, first to
        see whether it was a trace; the second read found it empty."""
        if saved == "report":
            code, text, err = cli("run", "bad-only", "--json")
            assert code == 0, err
        else:
            text = saved_trace.read_text()
        done = subprocess.run([sys.executable, "-m", "ctxlab", "diff", stdin], input=text,
                              capture_output=True, text=True, env=environ(), timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == (
            "no changes" if saved == "report" else "no changes since the saved trace"
        )

    @pytest.mark.parametrize("args", [("diff", "/dev/zero"), ("check", "--baseline", "/dev/zero")])
    def test_an_endless_device_is_refused_after_64_mib(self, args):
        """/dev/zero has no size to check before reading: it is read up to
        the limit, then refused (it was read for ever, memory growing)."""
        code, out, err = cli(*args, timeout=60)
        assert code == 2 and out == ""
        assert one_line(err) == "ctxlab: error: /dev/zero is too large for a ctxlab report (over 64 MiB)"

    @pytest.mark.parametrize(
        "args, what",
        [
            (("diff",), "a ctxlab report"),
            (("check", "--baseline"), "a ctxlab report"),
            (("trace", "threads:app", "--app-dir", str(APPS), "--baseline"), "a saved trace"),
        ],
    )
    def test_a_file_nested_too_deep(self, tmp_path, args, what):
        """50,000 nested lists, in a value of an otherwise good snapshot:
        Python's JSON parser recursed out (a traceback, exit 1, which reads
        as drift).  One line, exit 2."""
        path = tmp_path / "deep.json"
        path.write_text(json.dumps(report_with()).replace("null}]}]", "[" * 50_000 + "]" * 50_000 + "}]}]"))
        code, out, err = cli(*args, str(path))
        assert code == 2 and out == ""
        assert one_line(err) == f"ctxlab: error: {path} nests deeper than 200 levels; {what} never does"

    def test_scenarios_with_a_saved_trace_is_refused(self, saved_trace, tmp_path):
        """diff of a saved trace took --scenarios and never read it, even a
        directory that does not exist."""
        code, out, err = cli("diff", str(saved_trace), "--scenarios", str(tmp_path / "missing"))
        assert code == 2 and out == ""
        assert one_line(err) == (
            f"ctxlab: error: {saved_trace} is a saved trace, which names its own app: --scenarios is for snapshots"
        )

    def test_a_saved_trace_as_a_check_baseline_says_what_compares_it(self, saved_trace):
        """`check --baseline trace.json` was "a malformed ctxlab report:
        scenarios is None", where diff reads the same file as a trace."""
        code, out, err = cli("check", "--baseline", str(saved_trace))
        assert code == 2 and out == ""
        assert one_line(err) == (
            f"ctxlab: error: {saved_trace} is a saved trace, not a snapshot; 'ctxlab diff {saved_trace}' compares it"
        )

    @pytest.mark.parametrize("baseline", ["/dev/zero", "huge"])
    def test_a_trace_baseline_too_large_is_refused(self, tmp_path, baseline):
        """trace --baseline has the same limit as a snapshot (it had none)."""
        if baseline == "huge":
            baseline = tmp_path / "huge.json"
            with baseline.open("wb") as handle:
                handle.truncate(200 * 1024 * 1024)
        code, out, err = cli("trace", "threads:app", "--app-dir", str(APPS), "--baseline", str(baseline))
        assert code == 2 and out == ""
        assert "is too large for a saved trace" in one_line(err)

    @pytest.mark.parametrize(
        "encoded",
        [
            pytest.param(lambda text: ("# -*- coding: latin-1 -*-\n" + text).encode("latin-1"), id="latin-1"),
            pytest.param(lambda text: b"\xef\xbb\xbf" + text.encode(), id="byte-order-mark"),
        ],
    )
    def test_a_scenario_module_in_an_encoding_python_reads(self, tmp_path, encoded):
        """A scenario module Python imports (a PEP 263 coding line, a byte
        order mark) is listed, run and explained (list refused it)."""
        (tmp_path / "legacy.py").write_bytes(encoded(SCENARIO.format(name="legacy", summary="café crème")))
        args = ("--scenarios", str(tmp_path))
        code, out, err = cli("list", "--json", *args)
        assert code == 0, err
        assert {"name": "legacy", "summary": "café crème"}.items() <= json.loads(out)[-1].items()
        code, out, err = cli("run", "legacy", "--json", *args)
        assert code == 0 and json.loads(out)["scenarios"][0]["status"] == "pass", err
        code, out, err = cli("explain", "legacy", *args, PYTHONIOENCODING="utf-8")
        assert code == 0 and "café crème" in out, err

    def test_a_scenario_directory_given_twice_is_read_once(self):
        """`--scenarios x --scenarios ./x/`, or the bundled directory again,
        is no clash of each scenario with itself ("declared twice: hangs.py
        and hangs.py")."""
        bundled = Path(__file__).parent.parent / "scenarios"
        again = (
            "--scenarios",
            str(HOSTILE),
            "--scenarios",
            f"{HOSTILE}/../{HOSTILE.name}/",
            "--scenarios",
            str(bundled),
        )
        code, out, err = cli("run", "fine", "bad-only", "--json", *again)
        assert code == 0, err
        assert [s["name"] for s in json.loads(out)["scenarios"]] == ["fine", "bad-only"]

    def test_a_fifo_among_the_scenario_modules_is_passed_by(self, tmp_path):
        """A FIFO named like a module is not a module: it is not waited on."""
        os.mkfifo(tmp_path / "pipe.py")
        (tmp_path / "real.py").write_text(SCENARIO.format(name="real", summary="s"))
        code, out, err = cli("list", "--json", "--scenarios", str(tmp_path), timeout=30)
        assert code == 0 and json.loads(out)[-1]["name"] == "real", err

    def test_a_dangling_symlink_among_the_scenario_modules_is_named(self, tmp_path):
        """A link to a module that moved is one line, exit 2: passed by, its
        scenario would only be "unknown"."""
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "kept.py").write_text(SCENARIO.format(name="linked", summary="s"))
        (tmp_path / "linked.py").symlink_to(tmp_path / "elsewhere" / "kept.py")
        code, out, err = cli("list", "--json", "--scenarios", str(tmp_path))
        assert code == 0 and json.loads(out)[-1]["name"] == "linked", err  # a link that leads somewhere is a module
        (tmp_path / "mine.py").symlink_to(tmp_path / "moved" / "mine.py")
        (tmp_path / "real.py").write_text(SCENARIO.format(name="real", summary="s"))
        for args in (("list",), ("run", "real")):
            code, out, err = cli(*args, "--scenarios", str(tmp_path))
            assert code == 2 and out == "", err
            assert one_line(err) == (
                f"ctxlab: error: scenario module {tmp_path}/mine.py is a symlink to {tmp_path}/moved/mine.py, "
                "which does not exist"
            )

    def test_a_scenario_only_scenarios_provides(self, tmp_path):
        """A snapshot naming a scenario from --scenarios says to pass --scenarios."""
        path = tmp_path / "snap.json"
        path.write_text(json.dumps(report_with(scenarios__0__name="fine")))
        code, _, err = cli("diff", str(path))
        assert code == 2 and "--scenarios" in one_line(err) and "'fine'" in err


# -- text ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, said",
    [
        (("list", "--scenarios"), "scenario directory {name} cannot be read: File name too long"),
        (("probe", "threads:app", "--app-dir"), "--app-dir {name} cannot be read: File name too long"),
        (("trace", "threads:app", "--app-dir"), "--app-dir {name} cannot be read: File name too long"),
    ],
)
def test_a_directory_name_too_long(args, said):
    """A directory name past the system's limit is one line, exit 2 (a traceback)."""
    name = "d" * 300
    code, out, err = cli(*args, name)
    assert code == 2 and out == ""
    assert one_line(err) == "ctxlab: error: " + said.format(name=name)


@pytest.mark.parametrize("command", ["probe", "trace"])
@pytest.mark.parametrize("seconds", ["inf", "1e309", "nan", "86401", "0.05", "-1"])
def test_a_timeout_past_a_day_or_no_number_of_seconds_is_refused(command, seconds):
    """--timeout inf overflowed the wait (a traceback): at most a day.  NaN
    passes neither bound, and was told it should be at most 86400."""
    code, out, err = cli(command, "threads:app", "--app-dir", str(APPS), "--timeout", seconds)
    assert code == 2 and out == ""
    assert (
        one_line(err)
        == f"ctxlab: error: Invalid value for '--timeout': expects seconds from 0.1 to 86400, not {seconds}"
    )
    code, out, err = cli(command, "threads:app", "--app-dir", str(APPS), "--timeout", "soon")
    assert (
        code == 2
        and one_line(err) == "ctxlab: error: Invalid value for '--timeout': expects seconds, such as 30, not 'soon'"
    )


CONTROL_CHARACTERS = """
from ctxlab.scenario import scenario


@scenario("bell", summary="s", expect={})
def raises():
    raise ValueError("bad byte \\x00, then \\x1b[31m")
"""


def test_junit_of_control_characters_is_well_formed(tmp_path):
    """An app's exception message holding characters XML 1.0 cannot hold
    (\\x00, escape codes): the JUnit file still parses (CI rejected it),
    those characters spelled as Python does.  (A name can hold none: it is
    refused as the catalog reads it.)"""
    import xml.etree.ElementTree as ET

    (tmp_path / "control.py").write_text(CONTROL_CHARACTERS)
    junit = tmp_path / "junit.xml"
    code, _, err = cli("check", "--junit", str(junit), "--scenarios", str(tmp_path))
    assert code == 3, err
    case = next(c for c in ET.parse(junit).iter("testcase") if c.get("name").startswith("bell"))
    assert case.get("name") == "bell"
    assert case.find("error").get("message") == "ValueError: bad byte \\x00, then \\x1b[31m"


class TestText:
    """What ctxlab prints is literal, readable on any terminal, and uncut."""

    # The error line around the argument is 53 characters: 947 make it 1,000.
    @pytest.mark.parametrize("length, left_out", [(947, 0), (948, 1), (100_000, 99_053)])
    def test_an_argument_pasted_by_mistake_is_echoed_by_its_ends(self, length, left_out):
        """`ctxlab explain "$(cat big.json)"`: an error line past 1,000
        characters keeps its first and last 500, and says how many it left out."""
        argument = "<" * (length // 2) + ">" * (length - length // 2)
        code, out, err = cli("explain", argument)
        line = one_line(err)
        assert code == 2 and out == ""
        whole = f"ctxlab: error: unknown scenario '{argument}'; see 'ctxlab list'"
        assert len(whole) == 1000 + left_out
        if left_out:
            assert line == f"{whole[:500]} [... {left_out:,} characters left out ...] {whole[-500:]}"
        else:
            assert line == whole

    def test_markup_in_names_summaries_and_probes_is_literal(self):
        """Rich markup in a scenario's name, summary and probe is printed as written."""
        args = ("--scenarios", str(HOSTILE))
        code, out, err = cli("list", "--tag", "markup", *args)
        assert code == 0, err
        assert "markup-[/b]-name" in out and "[bold]tags[/bold]" in out
        code, out, err = cli("run", "markup-[/b]-name", *args)
        assert code == 0, err
        assert "markup-[/b]-name" in out and "seen.[/i]" in out
        code, out, err = cli("explain", "markup-[/b]-name", *args)
        assert code == 0 and "[bold]tags[/bold]" in out, err

    @pytest.mark.parametrize("colors", [{}, {"NO_COLOR": None, "FORCE_COLOR": "1"}])
    def test_a_control_character_in_a_scenario_s_source_is_shown_as_an_escape(self, tmp_path, colors):
        """explain prints the scenario's source through Rich's own Text
        (syntax highlighting), which ctxlab does not make: a literal ESC in
        a comment is escaped as the lines are written."""
        (tmp_path / "raw.py").write_text(SCENARIO.format(name="raw", summary="s") + "# clears \x1b[2J the screen\n")
        code, out, err = cli("explain", "raw", "--scenarios", str(tmp_path), **colors)
        assert code == 0, err
        assert "\x1b[2J" not in out and "# clears \\x1b[2J the screen" in out

    @pytest.mark.parametrize("colors", [{}, {"NO_COLOR": None, "FORCE_COLOR": "1"}])
    def test_control_characters_are_shown_as_escapes(self, tmp_path, colors):
        """An ESC in a summary, a probe's label, an app's error or a path would
        clear or recolour the terminal (and a CI log that renders it): it is
        printed as `\\x1b`, in plain output and through Rich alike, and a BEL
        (which Rich would drop) as `\\x07`.  A table measures the escape as
        printed, so its row stays in line."""
        args = ("--scenarios", str(HOSTILE))
        for command in (("list", "--tag", "control"), ("run", "control-chars"), ("explain", "control-chars")):
            code, out, err = cli(*command, *args, **colors)
            assert code == (3 if "run" in command else 0), err
            assert "\x1b[2J" not in out and "\\x1b[2J" in out, command
            assert "rings \\x07" in out, command
            if "run" in command:
                lines = re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines()
                (header,) = [line for line in lines if " observed " in line]
                (row,) = [line for line in lines if line.startswith("1  seen")]
                assert re.match(r"1  seen\\x1b\[8m +", row).end() == header.index("observed"), out
        assert "seen\\x1b[8m" in out and "boom \\x1b[2J\\x1b[H" in out
        missing = tmp_path / "dir\x1b[2J"
        code, out, err = cli("list", "--scenarios", str(missing), **colors)
        assert code == 2 and one_line(err) == f"ctxlab: error: scenario directory {tmp_path}/dir\\x1b[2J does not exist"

    def test_requirement_extras_are_printed_literally(self, tmp_path):
        """`uvicorn[standard]` in --with keeps its extra in what is printed."""
        code, out, err = cli("matrix", "--with", "uvicorn[standard]==0.0.424242", "--with", "uvicorn[standard]==0.0.424243",
                             CTXLAB_CACHE=str(tmp_path), timeout=300)  # fmt: skip
        assert "Traceback" not in err
        assert "building an environment for uvicorn[standard]==0.0.424242" in err
        # Neither column could be built: a failure, and nothing compared.
        assert code == 1 and out.splitlines()[-1] == "nothing was compared: no two neighbouring columns both ran"

    @pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, {"TERM": "dumb"}])
    def test_a_terminal_that_cannot_show_arrows_gets_ascii(self, env):
        """ASCII instead of → ✓ ✗ and box drawing, on the table and explain views."""
        code, out, err = cli("run", "bad-then-shiny", **env)
        assert code == 0, err
        assert out.isascii() and "ShinyMiddleware -> BadMiddleware -> app" in out
        code, out, err = cli("explain", "bad-then-shiny", **env)
        assert code == 0 and out.isascii(), err

    def test_a_terminal_that_can_show_arrows_gets_them(self):
        """A UTF-8 terminal gets the arrows themselves."""
        code, out, err = cli("run", "bad-then-shiny", PYTHONIOENCODING="utf-8")
        assert code == 0 and "ShinyMiddleware → BadMiddleware → app" in out, err

    @pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, {"TERM": "dumb"}])
    def test_what_an_ascii_terminal_cannot_show_is_replaced(self, env):
        """A name the user typed with an accent comes back with `?` for it,
        the stream's own replacement, on stderr as on stdout."""
        code, _, err = cli("run", "café", **env)
        assert code == 2 and one_line(err) == "ctxlab: error: unknown scenario 'caf?'; see 'ctxlab list'"

    def test_a_closed_stdin_leaves_the_report_on_stdout(self):
        """`ctxlab run bad-only <&-`: ctxlab gives the missing stdin /dev/null,
        and its report still reaches stdout."""
        code, out, err = cli("run", "bad-only", close_stdin=True)
        assert code == 0 and re.fullmatch(r"1 passed in \d+\.\d\ds", out.splitlines()[-1]), (out, err)

    @pytest.mark.parametrize("args", [("run", "bad-only"), ("check", "--server", "asgi")])
    def test_a_run_says_how_long_it_took(self, args):
        """The summary's time lies between 0 and the time ctxlab ran."""
        started = time.monotonic()
        code, out, _ = cli(*args)
        took = time.monotonic() - started
        seconds = float(re.fullmatch(r"\d+ passed(, \d+ skipped)? in (\d+\.\d\d)s", out.splitlines()[-1])[2])
        assert code == 0 and 0 <= seconds <= took, (seconds, took)

    @pytest.mark.parametrize("args", [("list",), ("run", "bad-only", "--json")])
    def test_a_closed_stdout_is_one_line(self, args):
        """`ctxlab list >&-`: nowhere to print; one line, exit 2."""
        code, _, err = cli(*args, stdout=None, close_stdout=True)
        assert code == 2
        assert one_line(err) == "ctxlab: error: stdout is closed; redirect it (> /dev/null) to run without output"

    @pytest.mark.parametrize(
        "args", [("list",), ("--version",), ("run", "bad-only"), ("run", "bad-only", "--json"), ("explain", "bad-only")]
    )
    def test_a_full_stdout_is_one_line(self, args):
        """`ctxlab list > /dev/full`: the output cannot be written; one line
        on stderr, exit 2 (not a traceback and exit 1, which reads as drift)."""
        with open("/dev/full", "w") as full:
            code, _, err = cli(*args, stdout=full)
        assert code == 2
        assert one_line(err) == "ctxlab: error: cannot write to stdout: No space left on device"

    def test_a_full_stderr_keeps_the_exit_code(self):
        """`ctxlab run nosuch 2> /dev/full`: the error line cannot be shown,
        the exit code still says usage error (2), not drift."""
        with open("/dev/full", "w") as full:
            code, out, _ = cli("run", "no-such-scenario", stderr=full)
        assert code == 2 and out == ""

    def test_a_closed_stderr(self):
        """`ctxlab run ... 2>&-`: what a scenario prints (sent to stderr)
        goes nowhere; it never reaches the worker's pipe, which took the
        free descriptor 2 (the scenario timed out), nor stdout; and an error
        line does not land on stdout either."""
        code, out, _ = cli("run", "prints", "--json", "--scenarios", str(HOSTILE), stderr=None, close_stderr=True)
        assert code == 0 and [s["status"] for s in json.loads(out)["scenarios"]] == ["pass"]
        code, out, _ = cli("run", "no-such-scenario", stderr=None, close_stderr=True)
        assert code == 2 and out == ""

    @pytest.mark.parametrize(
        "args, code",
        [
            (("run", "prints", "--scenarios", str(HOSTILE)), 0),
            (("run", "prints", "--json", "--scenarios", str(HOSTILE)), 0),
            (("probe", "prints:app", "--app-dir", str(APPS)), 0),
            (("trace", "prints:app", "--app-dir", str(APPS)), 0),
        ],
    )
    def test_a_stderr_whose_reader_is_gone(self, args, code):
        """`ctxlab run ... 2> >(head -1)` once head has gone: what the app
        prints finds no reader, which must not make its print raise
        BrokenPipeError (the scenario was an error): stdout is as with a
        stderr that reads, and so is the exit code."""
        reading, writing = os.pipe()
        os.close(reading)
        try:
            gone = cli(*args, stderr=writing)
        finally:
            os.close(writing)
        read = cli(*args)
        assert gone[0] == read[0] == code
        assert _no_durations(gone[1]) == _no_durations(read[1]) and "hello" not in read[1]
        assert "hello from" in read[2]  # what it printed, where it could be read

    @pytest.mark.parametrize(
        "args",
        [("run", "prints", "--json", "--scenarios", str(HOSTILE)), ("trace", "prints:app", "--app-dir", str(APPS))],
    )
    def test_a_full_stderr_does_not_fail_what_the_app_prints(self, args):
        """`2> /dev/full`: the app's print raised ENOSPC, and the scenario
        (or the traced request) failed; stdout is as with a stderr that reads."""
        with open("/dev/full", "w") as full:
            code, out, _ = cli(*args, stderr=full)
        read = cli(*args)
        assert code == read[0] == 0
        assert _no_durations(out) == _no_durations(read[1])

    def test_an_accent_the_stream_cannot_show_is_replaced_in_what_the_app_prints(self, tmp_path):
        """PYTHONIOENCODING=ascii: the app's print of "café" must not raise
        UnicodeEncodeError (the request failed), and shows as Python's own
        replacement does."""
        (tmp_path / "accent.py").write_text(ACCENT_APP)
        code, out, err = cli("trace", "accent:app", "--app-dir", str(tmp_path), "--json", PYTHONIOENCODING="ascii")
        assert code == 0, err
        assert [r["status"] for r in json.loads(out)["requests"]] == [200, 200]
        assert err.splitlines() == ["caf? au lait"] * 2

    @pytest.mark.parametrize("terminal", [True, False])
    def test_the_apps_streams_still_say_what_they_write_to(self, terminal):
        """An app may ask whether they are a terminal (uvicorn's log colours
        do), or hand their descriptor on (faulthandler, a subprocess): the
        child's streams answer as the descriptors they write to would."""
        import pty

        from ctxlab import isolate

        primary, secondary = pty.openpty() if terminal else os.pipe()
        saved = os.dup(2)
        os.dup2(secondary, 2)
        try:
            answer = isolate.call(
                lambda: (sys.stdout.isatty(), sys.stderr.isatty(), sys.stdout.fileno(), sys.stderr.fileno()),
                30,
                quiet_stdout=True,
            )
        finally:
            os.dup2(saved, 2)
            for fd in (saved, primary, secondary):
                os.close(fd)
        assert answer == (terminal, terminal, 1, 2)

    @pytest.mark.parametrize("cache", ["file", "/dev/null"])
    def test_a_cache_that_is_not_a_directory_is_done_without(self, tmp_path, cache):
        """CTXLAB_CACHE naming a file: the catalog index is a cache, and
        list works without it (it was a traceback), and leaves the file be."""
        if cache == "file":
            cache = tmp_path / "cache"
            cache.write_text("keep me")
        (tmp_path / "fresh.py").write_text(SCENARIO.format(name="fresh", summary="s"))  # never indexed
        code, out, err = cli("list", "--scenarios", str(tmp_path), CTXLAB_CACHE=str(cache))
        assert code == 0 and "fresh" in out and err == ""
        assert cache == "/dev/null" or cache.read_text() == "keep me"

    @pytest.mark.parametrize("colors", [{}, {"NO_COLOR": None, "FORCE_COLOR": "1"}])
    def test_a_one_column_terminal_keeps_words_whole(self, colors):
        """COLUMNS=1 (set by mistake): explain, drawn by Rich, wrapped every
        word down to a letter a line; it wraps at 40 columns at the least."""
        code, out, err = cli("explain", "bad-only", COLUMNS="1", **colors)
        assert code == 0, err
        words = set(re.sub(r"\x1b\[[0-9;]*m", "", out).split())
        assert {"bad-only", "BaseHTTPMiddleware", "BadMiddleware"} <= words

    @pytest.mark.parametrize("terminal", [False, True])
    def test_list_never_cuts_a_name(self, terminal):
        """At any terminal width every scenario name appears whole, piped or
        on a terminal; a terminal too narrow for the table gets a paragraph
        per scenario."""
        _, rows, _ = ctxlab("list", "--json")
        names = [row["name"] for row in json.loads(rows)]
        colours = {"NO_COLOR": None, "FORCE_COLOR": "1"} if terminal else {}
        for width in (20, 33, 50, 64, 80, 200):
            code, out, _ = cli("list", COLUMNS=str(width), **colours)
            assert code == 0
            out = re.sub(r"\x1b\[[0-9;]*m", "", out)
            words = set(out.split())
            cut = [name for name in names if name not in words]
            assert not cut, f"COLUMNS={width}: {cut}"
            if terminal:
                header = out.splitlines()[0].split()
                assert (header == ["name", "tags", "summary"]) == (width >= 80), (width, header)

    @pytest.mark.parametrize(
        "columns, width", [("1", 40), ("39", 40), ("41", 41), ("500", 500), ("501", 500), ("1000000", 500)]
    )
    def test_a_width_set_by_mistake_is_held_between_40_and_500(self, columns, width):
        """COLUMNS=1000000: Rich padded explain's panels and source to it,
        144 MB of output; COLUMNS=1 wrapped a letter a line.  Explain's
        panels fill the width ctxlab settles on."""
        code, out, err = cli("explain", "bad-then-shiny", COLUMNS=columns, NO_COLOR=None, FORCE_COLOR="1")
        assert code == 0, err
        lines = re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines()
        assert len(lines) > 20 and max(map(len, lines)) == width

    @pytest.mark.parametrize(
        "args, shown",
        [
            (["run", "--help"], ["--tag TAG", "--scenarios DIR", "-o, --output FILE", "NAME..."]),
            (["diff", "--help"], ["FILE"]),
            (["probe", "--help"], ["MODULE:ATTR"]),
            (["check", "--help"], ["--junit FILE", "--baseline FILE"]),
        ],
    )
    def test_help_shows_plain_metavars(self, args, shown):
        """Help names arguments the way a user types them."""
        code, out, _ = cli(*args)
        assert code == 0
        assert "<list[" not in out and "{FILE}" not in out and "<path>" not in out
        for text in shown:
            assert text in out

    @pytest.mark.parametrize(
        "command, usage",
        [("run", "run [OPTIONS] [NAME...]"), ("diff", "diff [OPTIONS] FILE")],
    )
    def test_usage_brackets_what_is_optional_only(self, command, usage):
        code, out, _ = cli(command, "--help")  # as `python -m ctxlab`, which the usage line names
        assert code == 0 and out.splitlines()[0] == f"Usage: python -m ctxlab {usage}"

    def test_help_lists_every_exit_code(self):
        """The top-level help documents 130 and 143 with the others."""
        code, out, _ = cli("--help")
        assert code == 0 and "130 interrupted" in out and "143" in out

    def test_help_offers_no_shell_completion(self):
        """The top-level options are the two the README names: Typer's
        --install-completion and --show-completion are switched off."""
        code, out, _ = cli("--help")
        options = out.split("Options:\n", 1)[1].split("\n\n", 1)[0]
        assert code == 0 and [line.split()[0] for line in options.splitlines()] == ["--version", "--help"], out

    @pytest.mark.parametrize("command, code", [("explain", 3), ("serve", 3)])
    def test_a_scenario_whose_module_fails_to_import(self, command, code):
        """explain and serve of a broken module: one line, exit 3."""
        got, _, err = cli(command, "import-fails", "--scenarios", str(HOSTILE))
        assert got == code
        assert "this module is broken on purpose" in one_line(err)


# -- pipes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [("run", "--all"), ("run", "--all", "--json")])
def test_a_closed_pipe_ends_quietly(args):
    """`ctxlab run --all | head -1` stops without a traceback and without claiming drift."""
    running = Cli(*args)
    first = running.process.stdout.readline()
    code, err = running.without_a_reader()
    assert first.strip()
    assert err == "" and code == 141


# -- matrix ------------------------------------------------------------------------------------
CACHED = ["--with", "uvicorn==0.44.0", "--with", "uvicorn==0.45.0"]  # built by test_ci


class TestMatrix:
    """matrix gates CI: drift or an error anywhere fails it."""

    def test_drift_in_any_column_exits_1(self):
        """A scenario drifting in the columns makes matrix exit 1."""
        code, out, err = cli("matrix", *CACHED, "--server", "asgi", "--scenarios", str(FIXTURES / "drifting_scenarios"),
                             "--json", timeout=600)  # fmt: skip
        assert code == 1, err
        cells = {row["name"]: row["cells"] for row in json.loads(out)["scenarios"]}
        assert [c["status"] for c in cells["always-drifts"]] == ["drift", "drift"]

    def test_a_column_whose_run_exits_3_is_read_all_the_same(self):
        """A scenario that crashes (its run exits 3 in each column) is an
        error in its row; the columns themselves ran, and matrix exits 1."""
        code, out, err = cli("matrix", *CACHED, "--server", "asgi", "--scenarios", str(FIXTURES / "crashing_scenarios"),
                             "--json", timeout=600)  # fmt: skip
        assert code == 1, err
        grid = json.loads(out)
        assert [column["error"] for column in grid["columns"]] == [None, None]
        cells = {row["name"]: row["cells"] for row in grid["scenarios"]}
        assert [c["status"] for c in cells["always-crashes"]] == ["error", "error"]
        assert [c["status"] for c in cells["bad-only"]] == ["pass", "pass"]

    def test_a_column_that_prints_no_report_is_an_error_cell_saying_why(self):
        """A scenario that kills the column's ctxlab (SIGKILL: no report, and
        nothing on stderr after the scenario's own last line): each column is
        an error naming that last line, and matrix exits 1.  The shell each
        killed worker left to kill its process group ends within a second
        (it polls), so it may outlive matrix by that much, no more."""
        running = Cli("matrix", *CACHED, "--server", "asgi", "--scenarios", str(FIXTURES / "killing_scenarios"),
                      "--json")  # fmt: skip
        out, err = running.process.communicate(timeout=600)
        deadline = time.monotonic() + 10
        while left := session_processes(running.process.pid):
            assert time.monotonic() < deadline, f"{left} outlived matrix"
            time.sleep(0.05)
        assert running.process.returncode == 1 and "Traceback" not in err, err
        grid = json.loads(out)
        assert [column["error"] for column in grid["columns"]] == [
            f"ctxlab printed no report under {label}: and kills ctxlab now" for label in CACHED[1::2]
        ]
        assert grid["scenarios"] == []

    def test_interrupted_while_building_an_environment(self, tmp_path):
        """SIGTERM while a column's environment is built (the installer has
        started processes of its own, as venv's ensurepip or uv's
        interpreter query): 143, the installer's processes are gone too
        (they outlived ctxlab, writing into the deleted directory), and no
        half-built environment is left in the cache."""
        running = Cli("matrix", "--with", "uvicorn==0.40.0", "--with", "uvicorn==0.41.0", "--server", "asgi",
                      CTXLAB_CACHE=str(tmp_path))  # fmt: skip
        ctxlab_pid, deadline = running.process.pid, time.monotonic() + 120
        while not [
            pid for pid in session_processes(ctxlab_pid) if _ppid(Path(f"/proc/{pid}/stat")) not in (None, 1, ctxlab_pid)
            and pid != ctxlab_pid
        ]:  # fmt: skip
            assert running.process.poll() is None and time.monotonic() < deadline, "no installer process was seen"
            time.sleep(0.02)
        running.process.send_signal(signal.SIGTERM)
        code, _, err = running.finish(timeout=10)
        assert code == 143 and "Traceback" not in err
        time.sleep(0.5)  # what an orphaned installer would still write
        assert not list((tmp_path / "envs").iterdir())

    def test_a_bad_scenario_directory_is_refused_before_any_build(self, tmp_path):
        """--scenarios naming no directory: one line, exit 2, before minutes
        of building environments (each column found out on its own)."""
        missing = tmp_path / "missing"
        code, out, err = cli("matrix", "--with", "uvicorn==0.44.0", "--with", "uvicorn==0.45.0",
                             "--scenarios", str(missing), CTXLAB_CACHE=str(tmp_path / "cache"))  # fmt: skip
        assert code == 2 and out == ""
        assert one_line(err) == f"ctxlab: error: scenario directory {missing} does not exist"
        assert not (tmp_path / "cache" / "envs").exists()

    def test_an_uninstallable_column_is_an_error_cell(self, tmp_path):
        """A column that cannot be installed is an error with the installer's
        reason; the other columns still run and matrix exits 1.  In a cache
        of its own: a bug that marked the broken column built would spoil
        the shared cache for every test after it."""
        code, out, err = cli("matrix", "--with", "uvicorn==0.0.424242", *CACHED[2:], "--server", "asgi", "--json",
                             CTXLAB_CACHE=str(tmp_path), timeout=600)  # fmt: skip
        assert code == 1 and "Traceback" not in err
        grid = json.loads(out)
        broken, good = grid["columns"]
        assert broken["error"].startswith("cannot build the environment for uvicorn==0.0.424242: ")
        assert "0.0.424242" in broken["error"].split(": ", 1)[1]  # the installer's own reason
        assert good.get("error") is None and grid["scenarios"]

    def test_each_checkout_has_its_own_shim(self, tmp_path):
        """Two checkouts running matrix at once never run each other's ctxlab:
        setting up one leaves the other's link to its own code."""
        other = tmp_path / "checkout"
        (other / "ctxlab").mkdir(parents=True)
        for source in (Path(__file__).parent.parent / "ctxlab").glob("*.py"):
            (other / "ctxlab" / source.name).write_text(source.read_text())
        # The interpreter outside the venv, where ctxlab is installed in editable mode.
        python = os.path.realpath(sys.executable)

        def shim_of(checkout) -> Path:
            env = environ(CTXLAB_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(checkout))
            show = "from ctxlab import matrix; print(matrix._shim())"
            done = subprocess.run([python, "-c", show], capture_output=True, text=True, env=env, cwd=tmp_path)
            return Path(done.stdout.strip())

        here = Path(__file__).parent.parent
        mine = shim_of(here)
        theirs = shim_of(other)
        assert (mine / "ctxlab").resolve() == (here / "ctxlab").resolve()
        assert (theirs / "ctxlab").resolve() == (other / "ctxlab").resolve()


# -- scenarios that print ------------------------------------------------------------------------
def test_a_scenario_that_prints_keeps_stdout_json():
    """run --json: what a scenario's app prints goes to stderr, so stdout
    holds one JSON document, as for probe."""
    code, out, err = cli("run", "prints", "--json", "--scenarios", str(HOSTILE))
    assert code == 0, err
    assert [s["status"] for s in json.loads(out)["scenarios"]] == ["pass"]
    assert "hello from the factory" in err and "hello from the endpoint" in err


def test_a_line_the_app_left_unfinished_is_printed_all_the_same():
    """What the app wrote without a newline is still in its buffer when the
    worker answers: it is flushed then, not lost when the worker ends."""
    code, _, err = cli("run", "leaves-a-line-unfinished", "--json", "--scenarios", str(HOSTILE))
    assert code == 0 and "no newline yet" in err, err


@pytest.mark.parametrize("name", ["closes-its-streams", "leaves-a-line-unfinished"])
def test_a_scenario_whose_prints_cannot_be_flushed_still_answers(name):
    """What the app printed is flushed before each answer; a stream that
    cannot take it (closed by the app, or a full stderr: `2> /dev/full`)
    does not cost the scenario its report."""
    with open("/dev/full", "w") as full:
        code, out, _ = cli("run", name, "--json", "--scenarios", str(HOSTILE), stderr=full)
    assert code == 0
    assert [s["status"] for s in json.loads(out)["scenarios"]] == ["pass"]


# -- probe targets -------------------------------------------------------------------------------


class TestProbeTargets:
    """A user's module that misbehaves: one line, exit 2."""

    @pytest.mark.parametrize("command", ["probe", "trace"])
    @pytest.mark.parametrize("module", ["../threads", "hostile_apps/threads.py"])
    def test_a_path_where_a_module_name_belongs(self, command, module):
        """As uvicorn, MODULE is a dotted name: a path gave "the 'package'
        argument is required to perform a relative import"."""
        code, out, err = cli(command, f"{module}:app", cwd=FIXTURES)
        assert code == 2 and out == ""
        assert one_line(err) == (
            f"ctxlab: error: {module!r} is not a module name: MODULE is written as Python imports it (myapp.main,"
            " not myapp/main.py), and --app-dir says where to import it from"
        )

    @pytest.mark.parametrize(
        "command, said",
        [
            ("probe", "hostile_apps.unbound_proxy:app is an ASGI callable with no Starlette or FastAPI application inside"),
            ("trace", "every request to hostile_apps.unbound_proxy:app failed (request 1: RuntimeError: Working outside "
                      "of application context.) and no ContextVar was used: there is nothing to trace; check the app "
                      "and --path"),
        ],
    )  # fmt: skip
    def test_an_app_whose_every_attribute_raises(self, command, said):
        """An unbound proxy raises RuntimeError, not AttributeError, for any
        attribute ctxlab looks for: a traceback, before."""
        code, out, err = cli(command, "hostile_apps.unbound_proxy:app", "--app-dir", str(FIXTURES))
        assert code == 2 and out == ""
        assert one_line(err) == f"ctxlab: error: {said}"

    @pytest.mark.parametrize("command", ["probe", "trace"])
    def test_a_module_named_like_one_python_imported_first(self, tmp_path, command):
        """The app's typing.py lost to Python's own, imported long before:
        "module 'typing' has no attribute 'app'; did you mean 'Mapping'?"
        said nothing of why."""
        import typing

        (tmp_path / "typing.py").write_text(self.ANSWERING_APP)
        code, out, err = cli(command, "typing:app", "--app-dir", str(tmp_path))
        assert code == 2 and out == ""
        assert one_line(err) == (
            f"ctxlab: error: 'typing' is the module imported from {typing.__file__} before yours, "
            f"{tmp_path / 'typing.py'}: Python imports a name once; rename your module"
        )

    @pytest.mark.parametrize("command", ["probe", "trace"])
    def test_a_process_the_app_starts_in_a_session_of_its_own_is_not_left_behind(self, tmp_path, command):
        """Killing the child's process group missed it: it ran on after
        ctxlab exited."""
        record = tmp_path / "spawned"
        cli(command, "own_session:app", "--app-dir", str(APPS), SPAWNED=str(record))
        spawned = int(record.read_text())
        deadline = time.monotonic() + 2  # SIGKILL lands when the kernel schedules it
        while _running(spawned) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(spawned)

    ANSWERING_APP = (
        "import os\n"
        "from starlette.applications import Starlette\n"
        "from starlette.responses import PlainTextResponse\n"
        "from starlette.routing import Route\n"
        "async def home(request):\n"
        "    open(os.environ['SEEN'], 'a').write('answered\\n')\n"
        "    return PlainTextResponse('ok')\n"
        "app = Starlette(routes=[Route('/', home)])\n"
    )

    @pytest.mark.parametrize("command", ["probe", "trace"])
    @pytest.mark.parametrize("header", ["Content-Length: 999", "transfer-encoding: chunked"])
    def test_a_header_that_frames_the_body_is_refused(self, command, header):
        """ctxlab sets Content-Length from --data: one that disagreed made
        h11 refuse to send the request on uvicorn (a traceback), and in
        process the app saw two."""
        code, out, err = cli(command, "threads:app", "--app-dir", str(APPS), "--data", "abc", "--method", "POST",
                             "--header", header, "--server", "uvicorn")  # fmt: skip
        name = header.partition(":")[0]
        assert code == 2 and out == ""
        assert (
            one_line(err) == f"ctxlab: error: --header {name}: ctxlab frames the body itself, from --data; leave it out"
        )

    HOST_RECORDING_APP = (
        "import os\n"
        "from starlette.applications import Starlette\n"
        "from starlette.responses import PlainTextResponse\n"
        "from starlette.routing import Route\n"
        "async def home(request):\n"
        "    hosts = [v.decode() for k, v in request.scope['headers'] if k.lower() == b'host']\n"
        "    open(os.environ['SEEN'], 'a').write(repr(hosts) + '\\n')\n"
        "    return PlainTextResponse('ok')\n"
        "app = Starlette(routes=[Route('/', home)])\n"
    )

    @pytest.mark.parametrize("server", ["asgi", "uvicorn"])
    def test_a_host_header_replaces_the_default_host(self, tmp_path, server):
        """`--header 'Host: example.com'`: the app sees that one Host, in
        process as on a server (in process it saw two), by its own record."""
        (tmp_path / "main.py").write_text(self.HOST_RECORDING_APP)
        seen = tmp_path / "seen"
        code, _, err = cli("trace", "main:app", "--app-dir", str(tmp_path), "--requests", "1", "--server", server,
                           "--header", "Host: example.com", SEEN=str(seen))  # fmt: skip
        assert code == 0, err
        assert seen.read_text().splitlines() == ["['example.com']"]

    @pytest.mark.parametrize("shadowed", ["httpx", "uvicorn"])
    @pytest.mark.parametrize("server", ["asgi", "uvicorn"])
    @pytest.mark.parametrize("command", ["probe", "trace"])
    def test_an_app_directory_with_a_module_named_like_ctxlabs_client(self, tmp_path, server, command, shadowed):
        """The app's own httpx.py (which the app never imports) was imported
        in place of ctxlab's HTTP client once --app-dir came first on
        sys.path: a traceback.  The same for a uvicorn.py, with ctxlab
        serving on uvicorn.  The app answers, by its own record."""
        (tmp_path / f"{shadowed}.py").write_text(f'raise RuntimeError("the app\'s {shadowed}.py was imported")\n')
        (tmp_path / "main.py").write_text(self.ANSWERING_APP)
        seen = tmp_path / "seen"
        code, out, err = cli(command, "main:app", "--app-dir", str(tmp_path), "--path", "/", "--server", server,
                             SEEN=str(seen))  # fmt: skip
        assert code == 0 and "Traceback" not in err, err
        assert seen.read_text().splitlines()[0] == "answered"

    @pytest.mark.parametrize("command", ["probe", "trace"])
    def test_the_app_directory_comes_before_the_working_directory(self, tmp_path, command):
        """A main.py in the working directory and the app's main.py in
        --app-dir: the app's is imported, as uvicorn puts --app-dir first."""
        (tmp_path / "here").mkdir()
        (tmp_path / "here" / "main.py").write_text('raise RuntimeError("the working directory\'s main.py")\n')
        (tmp_path / "app").mkdir()
        (tmp_path / "app" / "main.py").write_text(self.ANSWERING_APP)
        seen = tmp_path / "seen"
        code, _, err = cli(command, "main:app", "--app-dir", str(tmp_path / "app"), "--path", "/", cwd=tmp_path / "here",
                           SEEN=str(seen))  # fmt: skip
        assert code == 0 and "Traceback" not in err, err
        assert seen.read_text().splitlines()[0] == "answered"

    def test_a_module_built_into_python(self):
        """`builtins:print` has no file to find the app's own code from (an
        AttributeError's traceback): the app is just not one."""
        code, out, err = cli("probe", "builtins:print")
        assert code == 2 and out == ""
        assert one_line(err) == (
            "ctxlab: error: builtins:print is an ASGI callable with no Starlette or FastAPI application inside"
        )
        code, out, err = cli("trace", "builtins:print")  # print, called as an app, prints (to stderr)
        assert code == 2 and out == "" and "Traceback" not in err
        assert err.splitlines()[-1].startswith("ctxlab: error: every request to builtins:print failed")

    def test_a_module_that_exits_at_import(self):
        """sys.exit at import is reported, not obeyed."""
        code, _, err = cli("probe", "exits_at_import:app", "--app-dir", str(APPS))
        assert code == 2 and "sys.exit(3)" in one_line(err)

    def test_a_module_that_prints_keeps_stdout_json(self):
        """The app's prints go to stderr: stdout holds one JSON document."""
        code, out, err = cli("probe", "prints:app", "--app-dir", str(APPS), "--json")
        assert code == 0, err
        assert json.loads(out)["app"] == "prints:app"
        assert "hello from import" in err

    @pytest.mark.parametrize("command", ["probe", "trace"])
    def test_an_app_that_computes_in_a_process_pool(self, command):
        """probe and trace run the app in a child that may start processes:
        the endpoint answers and nothing is left behind."""
        code, out, err = cli(command, "process_pool:app", "--app-dir", str(APPS), "--path", "/power", "--json")
        assert code == 0 and "Traceback" not in err, err
        document = json.loads(out)
        if command == "trace":
            assert document["requests"][0]["status"] == 200
        else:
            assert [layer["sees_endpoint_values"] for layer in document["layers"]] == [True]

    def test_a_module_that_starts_a_thread(self):
        """A non-daemon thread started at import does not keep ctxlab alive."""
        code, out, err = cli("probe", "threads:app", "--app-dir", str(APPS))
        assert code == 0 and "Traceback" not in err

    @pytest.mark.parametrize("server", ["asgi", "uvicorn"])
    def test_trace_of_an_app_that_never_answers(self, server, tmp_path):
        """A middleware that cannot be built fails every request: one line,
        exit 2 (not "no finding", exit 0), and no report file."""
        report = tmp_path / "trace.json"
        code, out, err = cli(
            "trace", "middleware_fails:app", "--app-dir", str(APPS), "--server", server, "-o", str(report)
        )
        assert code == 2 and "every request to middleware_fails:app failed" in one_line(err)
        assert ("this middleware cannot be built" in err) == (server == "asgi")  # uvicorn answers 500 itself
        assert out == "" and not report.exists()

    def test_trace_of_an_app_that_fails_each_request_its_own_way_names_the_first(self):
        code, _, err = cli("trace", "fails_in_turn:app", "--app-dir", str(APPS), "--requests", "2")
        assert code == 2 and "failed (request 1: RuntimeError: failure 1) and" in one_line(err)

    @pytest.mark.parametrize("server", ["asgi", "uvicorn"])
    @pytest.mark.parametrize("command", ["probe", "trace"])
    def test_a_lifespan_that_fails(self, command, server):
        """A failing lifespan startup: one line, exit 2, no unretrieved-task
        noise (on uvicorn the line held uvicorn's whole log of the traceback)."""
        code, out, err = cli(command, "lifespan_fails:app", "--app-dir", str(APPS), "--lifespan", "--server", server)
        said = {"asgi": "lifespan startup failed", "uvicorn": "uvicorn did not start"}[server]
        assert code == 2 and out == ""
        assert one_line(err) == f"ctxlab: error: {said}: RuntimeError: the database is down"


TWO_VARIABLES = """
from contextvars import ContextVar

request_id = ContextVar("request_id")
user_id = ContextVar("user_id")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    request_id.set("r-1")
    user_id.set(7)
    body = f"{request_id.get()} {user_id.get()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


ACCENT_APP = """
async def app(scope, receive, send):
    if scope["type"] == "http":
        print("caf\\u00e9 au lait")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


class TestDiffOfATrace:
    """`diff` of a saved trace traces the app again, for as long as the
    trace was allowed (it waited 30 s whatever --timeout had been)."""

    def test_an_app_that_hangs_now_is_given_the_saved_timeout(self, tmp_path):
        (tmp_path / "hangs_later.py").write_text(HANGS_LATER)
        saved = tmp_path / "trace.json"
        code, _, err = cli("trace", "hangs_later:app", "--app-dir", str(tmp_path), "--timeout", "1.5", "-o", str(saved))
        assert code == 0, err
        assert json.loads(saved.read_text())["options"]["timeout"] == 1.5
        started = time.monotonic()
        code, out, err = cli("diff", str(saved), HANG="1", timeout=20)
        assert code == 2 and out == "" and time.monotonic() - started < 15
        assert one_line(err) == (
            "ctxlab: error: hangs_later:app did not return within 1.5s "
            "(an import, factory or request that never returns?); see --timeout"
        )

    @pytest.mark.parametrize("saved_timeout", ["none", "null"])
    def test_a_trace_saved_without_a_timeout(self, tmp_path, saved_timeout):
        """Saved before timeouts were saved, or null: trace's default, 30 s
        (null waited for ever)."""
        (tmp_path / "hangs_later.py").write_text(HANGS_LATER)
        code, _, err = cli("trace", "hangs_later:app", "--app-dir", str(tmp_path), "-o", str(tmp_path / "t.json"))
        assert code == 0, err
        document = json.loads((tmp_path / "t.json").read_text())
        if saved_timeout == "none":
            del document["options"]["timeout"]
        else:
            document["options"]["timeout"] = None
        older = tmp_path / "older.json"
        older.write_text(json.dumps(document))
        code, out, err = cli("diff", str(older))
        assert code == 0 and "no changes since the saved trace" in out, err
        if saved_timeout == "null":  # (30 s: once is enough)
            code, out, err = cli("diff", str(older), HANG="1", timeout=60)
            assert code == 2 and "did not return within 30s" in one_line(err)


HANGS_LATER = """
import os
import time
from contextvars import ContextVar

seen = ContextVar("seen")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    seen.set(True)
    if os.environ.get("HANG"):
        time.sleep(3600)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


class TestTraceVar:
    """`trace --var NAME` narrows the trace to the variables the app names;
    a name the app never used was "no finding", exit 0, hiding a typo."""

    @pytest.fixture
    def app_dir(self, tmp_path):
        (tmp_path / "two.py").write_text(TWO_VARIABLES)
        return tmp_path

    def test_var_narrows_to_the_named_variable(self, app_dir):
        code, out, err = cli("trace", "two:app", "--app-dir", str(app_dir), "--var", "user_id", "--json")
        assert code == 0, err
        events = json.loads(out)["events"]
        assert {e["var"] for e in events} == {"user_id"}
        assert [e["op"] for e in events if e["request"] == 1] == ["set", "get"]

    @pytest.mark.parametrize(
        "named, said",
        [
            (["user"], "no ContextVar named 'user' was used during the 2 request(s); did you mean 'user_id'?"),
            (
                ["user_id", "nope"],
                "no ContextVar named 'nope' was used during the 2 request(s); the app used request_id, user_id",
            ),
            (  # the first the app never used, as named
                ["nope", "user_id", "nope2"],
                "no ContextVar named 'nope' was used during the 2 request(s); the app used request_id, user_id",
            ),  # fmt: skip
            (  # the suggestion is for that first one too, not for a later one close to a name
                ["nope", "user"],
                "no ContextVar named 'nope' was used during the 2 request(s); the app used request_id, user_id",
            ),  # fmt: skip
        ],
    )
    def test_a_name_the_app_never_used_is_refused(self, app_dir, tmp_path, named, said):
        saved = tmp_path / "trace.json"
        options = [arg for name in named for arg in ("--var", name)]
        code, out, err = cli("trace", "two:app", "--app-dir", str(app_dir), *options, "-o", str(saved))
        assert code == 2 and out == ""
        assert one_line(err) == f"ctxlab: error: {said}"
        assert not saved.exists()

    def test_an_app_that_uses_no_variable_says_so(self):
        code, out, err = cli("trace", "threads:app", "--app-dir", str(APPS), "--var", "user")
        assert code == 2 and out == ""
        assert (
            one_line(err)
            == "ctxlab: error: no ContextVar named 'user' was used during the 2 request(s); the app used none"
        )
