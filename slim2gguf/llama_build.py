"""Fetch the llama.cpp that llama-cpp-python vendors, apply ggml_patch/, install the patched gguf-py and build.

Source tree life cycle (all under the repo, gitignored):
  .cache/sdist/llama_cpp_python-<ver>.tar.gz      pip download, once
  .cache/pristine/llama_cpp_python-<ver>/          unpacked once, never modified
  build/llama.cpp/                                 patched tree; files are rewritten only when their content
                                                   changes, so cmake/ninja rebuilds stay incremental
"""
from __future__ import annotations

import filecmp
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .errors import SlimError
from .paths import BUILD_DIR, CACHE_DIR, PATCH_DIR, REPO_ROOT, SOURCE_DIR

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    res = subprocess.run(cmd, **kw)
    if res.returncode != 0:
        raise SlimError(f"command failed (exit {res.returncode}): {' '.join(str(c) for c in cmd)}")


def fetch_sdist() -> Path:
    """The llama-cpp-python sdist, downloaded from the package registry once."""
    sdist_dir = CACHE_DIR / "sdist"
    tarball = sdist_dir / f"{SDIST_NAME}.tar.gz"
    if not tarball.exists():
        sdist_dir.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(sdist_dir)])
    if not tarball.exists():
        raise SlimError(f"pip download did not produce {tarball}")
    return tarball


def pristine_tree() -> Path:
    """The unpacked sdist (read-only by convention)."""
    root = CACHE_DIR / "pristine"
    tree = root / SDIST_NAME
    if not (tree / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        tarball = fetch_sdist()
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tf:
            tf.extractall(root, filter="data")
    return tree


def _patch_files() -> list[Path]:
    return sorted((PATCH_DIR / "patches").glob("*.patch"))


def _sync_tree(src: Path, dst: Path) -> int:
    """Copy src over dst, touching only files whose bytes differ. Returns how many files changed."""
    changed = 0
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if target.exists() and filecmp.cmp(path, target, shallow=False):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        # a plain copy takes the current time: copy2 would keep the pristine file's old mtime, and a file reverted
        # to pristine content would look older than its object, so ninja would keep the stale build
        shutil.copy(path, target)
        changed += 1
    return changed


def prepare_source() -> Path:
    """Patched llama.cpp tree in build/llama.cpp: pristine vendor tree + ggml_patch/files + ggml_patch/patches.

    The patched tree is assembled in a scratch directory and synced, so unchanged files keep their mtimes.
    A hunk that does not apply stops everything (patch --forward --batch, non-zero exit).
    """
    vendor = pristine_tree() / "vendor" / "llama.cpp"
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        scratch = Path(tmp) / "llama.cpp"
        shutil.copytree(vendor, scratch, symlinks=True)
        files = PATCH_DIR / "files"
        if files.exists():
            shutil.copytree(files, scratch, dirs_exist_ok=True)
        for patch in _patch_files():
            res = subprocess.run(["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch",
                                  "-i", str(patch)], cwd=scratch, capture_output=True, text=True)
            if res.returncode != 0:
                raise SlimError(f"patch {patch.name} does not apply: {res.stdout.strip().splitlines()[-1:]}")
        SOURCE_DIR.mkdir(parents=True, exist_ok=True)
        n = _sync_tree(scratch, SOURCE_DIR)
    print(f"patched llama.cpp source in {SOURCE_DIR} ({n} files updated)", flush=True)
    return SOURCE_DIR


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


def install_gguf_py() -> None:
    """pip install the patched gguf-py into the running interpreter's environment (skip if unchanged)."""
    src = prepare_source() / "gguf-py"
    stamp = BUILD_DIR / "gguf-py.stamp"
    digest = _tree_digest(src)
    if stamp.exists() and stamp.read_text() == digest and _gguf_has_slim():
        return
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(src)])
    stamp.write_text(digest)


def _gguf_has_slim() -> bool:
    res = subprocess.run([sys.executable, "-c", "import gguf; gguf.GGMLQuantizationType.SLIM2_G64"],
                         capture_output=True)
    return res.returncode == 0


# ---------------------------------------------------------------------------------------------------------
# building llama.cpp (tools + shared libraries) and llama-cpp-python

TOOLS = ["llama-cli", "llama-server", "llama-perplexity", "llama-bench", "llama-quantize", "llama-imatrix"]
TEST_TARGETS = ["test-backend-ops"]


def build_dir(cuda: bool = False) -> Path:
    return BUILD_DIR / ("cuda" if cuda else "cpu")


def cmake_args(cuda: bool) -> list[str]:
    args = ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON",
            "-DLLAMA_BUILD_TESTS=ON", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
            "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
            # $ORIGIN-relative RUNPATHs: tools and libraries keep working when copied together
            # (--prefix, llama_cpp/lib inside the venv)
            "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        # No AMX kernels: GGML_NATIVE compiles them in wherever CPUID lists AMX, but virtual machines can list it
        # and still fault on its instructions (this project's 2-core Xeon box: SIGILL in tinygemm_kernel_amx for
        # Q4_1, SIGSEGV in ggml_backend_amx_mul_mat for a file with a Q8_0 head). Explicit -mno-amx-* outlive
        # -march=native; SLIM never used AMX. SLIM2GGUF_CMAKE_ARGS can set other flags.
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        args += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    if shutil.which("ccache"):
        args.append("-DGGML_CCACHE=ON")
    else:
        args.append("-DGGML_CCACHE=OFF")
    if cuda:
        arch = os.environ.get("SLIM2GGUF_CUDA_ARCH", "90a")
        args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}", "-DGGML_CUDA_FA_QUANTS=f16-f16"]
    else:
        args += ["-DGGML_CUDA=OFF"]
    extra = os.environ.get("SLIM2GGUF_CMAKE_ARGS", "").split()
    return args + extra


def configure(cuda: bool = False) -> Path:
    """cmake configure once per set of arguments (a stamp holds the last ones)."""
    src = prepare_source()
    bdir = build_dir(cuda)
    args = cmake_args(cuda)
    stamp = bdir / "slim2gguf-cmake-args.txt"
    if (bdir / "build.ninja").exists() and stamp.exists() and stamp.read_text() == "\n".join(args):
        return bdir
    for tool in ("cmake", "ninja"):
        if not shutil.which(tool):
            raise SlimError(f"{tool} not found: install it (e.g. `pip install {tool}` or your package manager)")
    bdir.mkdir(parents=True, exist_ok=True)
    _run(["cmake", "-S", str(src), "-B", str(bdir), *args])
    stamp.write_text("\n".join(args))
    return bdir


def compile_targets(cuda: bool = False, targets: list[str] | None = None, jobs: int | None = None) -> Path:
    bdir = configure(cuda)
    targets = targets or TOOLS
    jobs = jobs or os.cpu_count() or 2
    _run(["cmake", "--build", str(bdir), "-j", str(jobs), "--target", *targets])
    return bdir


def shared_libs(bdir: Path) -> list[Path]:
    """lib*.so* of the build (files and their soname links)."""
    libs = sorted((bdir / "bin").glob("lib*.so*"))
    if not any(p.name == "libllama.so" for p in libs):
        raise SlimError(f"no libllama.so in {bdir / 'bin'}: build first")
    return libs


def _copy_preserving_links(files: list[Path], dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in files:
        target = dest / f.name
        if f.is_symlink():
            link = os.readlink(f)
            if target.is_symlink() and os.readlink(target) == link:
                continue
            if target.exists() or target.is_symlink():
                target.unlink()
            os.symlink(link, target)
        else:
            if target.exists() and not target.is_symlink() and filecmp.cmp(f, target, shallow=False):
                continue
            if target.is_symlink():
                target.unlink()
            shutil.copy2(f, target)
        n += 1
    return n


def tool_path(name: str, cuda: bool = False) -> Path:
    return build_dir(cuda) / "bin" / name


def install_prefix(bdir: Path, prefix: Path, targets: list[str]) -> None:
    """Copy tools and shared libraries into PREFIX/bin (together: their RUNPATH is $ORIGIN)."""
    files = [bdir / "bin" / t for t in targets if (bdir / "bin" / t).exists()] + shared_libs(bdir)
    n = _copy_preserving_links(files, prefix / "bin")
    print(f"installed {len(files)} files into {prefix / 'bin'} ({n} updated)", flush=True)


def _llama_cpp_package_dir() -> Path | None:
    res = subprocess.run([sys.executable, "-c",
                          "import importlib.util as u; s = u.find_spec('llama_cpp'); "
                          "print(list(s.submodule_search_locations)[0] if s else '')"],
                         capture_output=True, text=True)
    out = res.stdout.strip()
    return Path(out) if res.returncode == 0 and out else None


def install_llama_cpp_python(bdir: Path) -> Path:
    """pip install llama-cpp-python from the patched sdist WITHOUT compiling (LLAMA_BUILD=OFF), then put our
    shared libraries where it looks by default (llama_cpp/lib), so `from llama_cpp import Llama` uses the
    patched build with no environment variable."""
    pkg = _llama_cpp_package_dir()
    stamp = BUILD_DIR / "llama-cpp-python.stamp"
    want = f"{LLAMA_CPP_PYTHON_VERSION} {sys.executable}"
    if pkg is None or not stamp.exists() or stamp.read_text() != want:
        sdist = pristine_tree()
        env = dict(os.environ, CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF")
        # --no-deps + --force-reinstall: reinstall only llama-cpp-python itself; its few dependencies are
        # installed under the project's constraints, so numpy & co. keep their pinned versions
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "--force-reinstall", "--no-deps", "--no-cache-dir", str(sdist)], env=env)
        constraints = REPO_ROOT / "constraints.txt"
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
              *(["-c", str(constraints)] if constraints.exists() else []),
              "typing-extensions>=4.5.0", "numpy>=1.20.0", "diskcache>=5.6.1", "jinja2>=2.11.3"])
        stamp.write_text(want)
        pkg = _llama_cpp_package_dir()
    if pkg is None:
        raise SlimError("llama_cpp is not importable after pip install")
    n = _copy_preserving_links(shared_libs(bdir), pkg / "lib")
    print(f"llama-cpp-python uses {pkg / 'lib'} ({n} libraries updated)", flush=True)
    return pkg / "lib"


def build_stock_gguf_lib(jobs: int | None = None) -> Path:
    """libggml-base.so of the UNPATCHED vendored llama.cpp (gguf.cpp lives there): lets the tests show that a stock
    llama.cpp refuses a SLIM file with an unknown-type error. Only ggml-base is compiled (~1 min on 2 cores)."""
    src = pristine_tree() / "vendor" / "llama.cpp"
    bdir = BUILD_DIR / "stock"
    lib = bdir / "bin" / "libggml-base.so"
    if not (bdir / "build.ninja").exists():
        bdir.mkdir(parents=True, exist_ok=True)
        _run(["cmake", "-S", str(src), "-B", str(bdir), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
              "-DBUILD_SHARED_LIBS=ON", "-DGGML_CUDA=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
              "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
              "-DLLAMA_OPENSSL=OFF", "-DGGML_CCACHE=OFF"])
    _run(["cmake", "--build", str(bdir), "-j", str(jobs or os.cpu_count() or 2), "--target", "ggml-base"])
    if not lib.exists():
        raise SlimError(f"stock build did not produce {lib}")
    return lib


def build(cuda: bool = False, prefix: Path | None = None, jobs: int | None = None, tests: bool = True,
          python: bool = True, stock: bool | None = None) -> Path:
    """The whole chain: sdist -> patched tree -> cmake/ninja (incremental) -> tools, llama-cpp-python."""
    t0 = time.time()
    stock = tests if stock is None else stock
    install_gguf_py()
    targets = TOOLS + (TEST_TARGETS if tests else [])
    bdir = compile_targets(cuda, targets, jobs)
    if prefix is not None:
        install_prefix(bdir, prefix, targets)
    if python:
        install_llama_cpp_python(bdir)
    if stock:
        build_stock_gguf_lib(jobs)
    print(f"llama.cpp ({'CUDA' if cuda else 'CPU'}) ready in {bdir / 'bin'} ({time.time() - t0:.0f} s)", flush=True)
    return bdir


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m slim2gguf.llama_build")
    ap.add_argument("--gguf-py-only", action="store_true", help="patch the source and install gguf-py only")
    ap.add_argument("--source-only", action="store_true", help="only assemble the patched tree")
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--prefix", type=Path)
    args = ap.parse_args(argv)
    if args.gguf_py_only:
        install_gguf_py()
        return 0
    if args.source_only:
        prepare_source()
        return 0
    build(cuda=args.cuda, prefix=args.prefix)
    return 0


if __name__ == "__main__":
    from .errors import run_cli

    sys.exit(run_cli(main))
