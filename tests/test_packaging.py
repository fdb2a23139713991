"""What `pip install .` brings: every third-party module the package imports is a dependency in setup.py's metadata
(required, or an extra for the optional parts), and every console script points at a command's `main`."""

import ast
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPORT_TO_DIST = {"PIL": "Pillow"}  # import names that differ from the distribution's


def _setup_constants() -> dict:
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def _dist(requirement: str) -> str:
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower()


def _third_party_imports() -> dict[str, str]:
    """Top-level module name -> one file importing it, over opmask_fast/ and kernels/."""
    found = {}
    for folder in ("opmask_fast", "kernels"):
        for root, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(root, f)
                for node in ast.walk(ast.parse(open(path).read(), path)):
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and not node.level:
                        names = [node.module]
                    else:
                        continue
                    for n in names:
                        top = n.split(".")[0]
                        if top not in sys.stdlib_module_names and top != "opmask_fast":
                            found.setdefault(top, os.path.relpath(path, ROOT))
    return found


def test_every_imported_package_is_a_dependency():
    consts = _setup_constants()
    required = {_dist(r) for r in consts["INSTALL_REQUIRES"]}
    extras = {_dist(r) for reqs in consts["EXTRAS_REQUIRE"].values() for r in reqs}
    imports = _third_party_imports()
    assert {"torch", "pycocotools", "matplotlib"} <= set(imports)  # the scan sees the package's imports
    missing = {m: where for m, where in imports.items() if IMPORT_TO_DIST.get(m, m).lower() not in required | extras}
    assert not missing, f"imported but not in setup.py's INSTALL_REQUIRES or EXTRAS_REQUIRE: {missing}"
    # the commands themselves need no extra: only the Triton kernels and the torchvision swap-in are optional
    assert extras == {"triton", "torchvision"}


def test_console_scripts_are_the_commands(monkeypatch, capsys):
    """Each console script runs its command and returns None: a console script exits with `sys.exit(f())`, so a
    returned dict would be printed and give exit code 1 after a successful run."""
    consts = _setup_constants()
    source = open(os.path.join(ROOT, "setup.py")).read()
    assert 'f"opmask-{c}=opmask_fast.{c}:console" for c in COMMANDS' in source
    for command in consts["COMMANDS"]:
        module = importlib.import_module(f"opmask_fast.cli.{command}")
        shim = importlib.import_module(f"opmask_fast.{command}")  # python -m opmask_fast.<command>
        assert shim.main is module.main
        calls = []
        monkeypatch.setattr(shim, "main", lambda argv=None: calls.append(argv) or {"metrics": 1.0})
        assert shim.console() is None and calls == [None]


def test_source_archive_builds_like_the_repository(tmp_path):
    """`python setup.py sdist` (what pip builds from, what a release uploads) carries every tracked source of csrc/
    (headers and CUDA files included: setup.py lists only the .cpp/.cu sources it compiles on this machine), every
    header an #include names, the Triton kernels, requirements.txt, the tests and the benchmarks and scripts they run.
    Fails without MANIFEST.in."""
    import re
    import subprocess
    import tarfile

    env = dict(os.environ, FORCE_CUDA="0")  # the archive must not depend on the build machine having nvcc
    done = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (archive,) = tmp_path.glob("opmask_fast-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/" in m.name}
    tops = ("csrc", "kernels", "tests", "benchmarks", "scripts")  # the tests run benchmarks/ and scripts/ files too
    try:
        tracked = subprocess.run(["git", "ls-files", *tops], cwd=ROOT, capture_output=True, text=True).stdout.split()
    except FileNotFoundError:  # no git
        tracked = []
    if not tracked:  # not a git checkout (an unpacked archive): the files on disk
        tracked = [os.path.relpath(os.path.join(d, f), ROOT) for top in tops
                   for d, _, fs in os.walk(os.path.join(ROOT, top)) for f in fs
                   if "__pycache__" not in d and not f.endswith((".pyc", ".so"))]
    missing = sorted(set(tracked) - names)
    assert not missing, f"not in the source archive: {missing[:10]}"
    for source in [n for n in names if n.startswith("csrc/")]:
        folder = os.path.dirname(source)
        for include in re.findall(r'#include\s+"([^"]+)"', open(os.path.join(ROOT, source)).read()):
            assert os.path.normpath(os.path.join(folder, include)) in names, (source, include)
    assert {"requirements.txt", "pytest.ini", "README.md", "setup.py"} <= names
    assert not [n for n in names if n.endswith((".so", ".pyc"))]
