"""The local Ray of a plain `hpsearch run`: loopback only, its token in a mode-600 file.

Each case runs in its own Python process (started through the ``spawn`` fixture, so it is
killed even if the test fails): ``init_ray`` sets Ray's authentication environment for the
process, which must not leak into other tests, and HOME points at a temporary folder so
the token files can be checked without touching the user's.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

# Starts Ray the way the driver does, runs one real Tune trial, then reports every TCP port
# the session's processes listen on and where Ray's and hpsearch's token files are.
PROBE = """
import json, os, sys, time
import psutil, ray
from ray import tune
from hpsearch.search.local_ray import init_ray

init_ray(None)
def trainable(config):
    tune.report({"score": config["x"] * 2})
grid = tune.Tuner(trainable, param_space={"x": 1},
                  run_config=tune.RunConfig(storage_path=sys.argv[1], verbose=0)).fit()
node = ray._private.worker._global_node
session = node.get_session_dir_path()
time.sleep(3)  # agents and metrics servers start in the background
procs = {p.pid: p for p in psutil.Process().children(recursive=True)}
for proc in psutil.process_iter(["cmdline"]):
    if session in " ".join(proc.info["cmdline"] or []):
        procs.update({p.pid: p for p in [proc, *proc.children(recursive=True)]})
procs[os.getpid()] = psutil.Process()
listening = []
for proc in procs.values():
    try:
        name = proc.name()
        listening += [[name, c.laddr.ip, c.laddr.port] for c in proc.net_connections("tcp")
                      if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        pass
print(json.dumps({"node_ip": node.node_ip_address, "session": session, "score": grid[0].metrics["score"],
                  "processes": len(procs), "listening": listening,
                  "token_path": os.environ.get("RAY_AUTH_TOKEN_PATH")}))
ray.shutdown()
"""

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _probe(spawn, tmp_path, code=PROBE, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    environ.update(HOME=str(tmp_path / "home"), **env)
    proc = spawn([sys.executable, "-c", code, tmp_path / "ray-results"], env=environ,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def test_local_ray_listens_on_loopback_only_with_a_private_token(spawn, tmp_path):
    code, out, err = _probe(spawn, tmp_path)
    assert code == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["score"] == 2  # a Tune trial ran
    assert report["node_ip"] == "127.0.0.1"
    assert report["listening"], "Ray's processes listen somewhere"
    exposed = [entry for entry in report["listening"] if entry[1] not in LOOPBACK]
    assert not exposed, exposed
    home = tmp_path / "home"
    token = home / ".hpsearch" / "ray_auth_token"
    assert report["token_path"] == str(token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) >= 32
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert not (home / ".ray" / "auth_token").exists()  # Ray wrote its own, mode 644, before
    private = Path(tempfile.gettempdir()) / f"hpsearch-{os.getuid()}"  # not /tmp/ray, mode 777
    assert Path(report["session"]).parent.parent == private
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_a_session_folder_others_could_enter_is_refused_before_ray_starts(spawn, tmp_path):
    shared = tmp_path / f"hpsearch-{os.getuid()}"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    code = "from hpsearch.search.local_ray import init_ray\ninit_ray(None)\n"
    returncode, _, err = _probe(spawn, tmp_path, code=code, TMPDIR=str(tmp_path))
    assert returncode == 1
    assert f"HpsearchError: {shared}: not a private folder of this user (owner uid {os.getuid()}, mode 755)" in err
    assert list(shared.iterdir()) == []


def test_a_token_file_others_can_read_is_refused_before_ray_starts(spawn, tmp_path):
    token = tmp_path / "token"
    token.write_text("x" * 64)
    token.chmod(0o644)
    code = "from hpsearch.search.local_ray import init_ray\ninit_ray(None)\n"
    returncode, _, err = _probe(spawn, tmp_path, code=code, RAY_AUTH_TOKEN_PATH=str(token))
    assert returncode == 1
    assert f"HpsearchError: {token}: Ray token readable by other users (mode 644); `chmod 600 {token}`" in err
    assert not (tmp_path / "home" / ".ray").exists()


def test_killing_a_spawned_tree_leaves_none_of_its_ray_processes(tmp_path):
    # The `spawn` fixture finds what to kill by a tag in the environment; Ray's agents replace
    # theirs when they rename themselves (`ray::DashboardAgent`), so only their tagged parent
    # leads to them. Left behind, they ran on after pytest with no parent.
    import time
    import uuid

    import psutil
    from helpers import SPAWN_TAG, alive, kill_processes, tagged_processes

    tag = uuid.uuid4().hex
    script = ("import time, ray; ray.init(address='local', num_cpus=1, include_dashboard=False); "
              "print('up', flush=True); time.sleep(600)")
    tree: list[psutil.Process] = []
    root = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, SPAWN_TAG: tag},
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert root.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the agents start in the background
            tree = psutil.Process(root.pid).children(recursive=True)
            if any(p.name().endswith("Agent") for p in alive(tree)):
                break
            time.sleep(0.5)
        assert any(p.name().endswith("Agent") for p in alive(tree)), [p.name() for p in alive(tree)]
        kill_processes(tagged_processes(tag))
        assert not alive(tree), [" ".join(p.cmdline())[:80] for p in alive(tree)]
    finally:  # also when an assertion failed: the tree as last seen, then the root
        kill_processes(alive(tree))
        root.kill()
        root.wait()
        root.stdout.close()
