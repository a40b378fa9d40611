"""Builds the m2mpsk package against an installed libm2mpsk.

pip (or python3 -m build) runs this from the binding's source directory,
bindings/python, or from an sdist made of it. The extension is made at
install time: SWIG runs on the shared interface file m2mpsk.i with the
headers of the libm2mpsk that pkg-config finds (module m2mpsk), and the
C compiler links that library. Nothing is fetched: setuptools and wheel
come from the interpreter (pip install --no-build-isolation).

The package, as the CMake build lays it out in the build tree:
  m2mpsk/__init__.py   SWIG's proxy (with the %pythoncode'd files in it)
  m2mpsk/_m2mpsk*.so   the extension
  m2mpsk/__init__.pyi  the type hints (m2mpsk.pyi here)
  m2mpsk/py.typed      PEP 561: the hints are to be used

A libm2mpsk outside the loader's search path (a --prefix of its own) is
found at run time through a RUNPATH to the directory pkg-config names with
-L; pkg-config prints no -L for the system's own library directories.
Editable installs (pip install -e) are refused: the package exists only
as laid out here.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PKG_CONFIG_MODULE = "m2mpsk"
# The interface m2mpsk.i and what it includes, relative to SWIG's include
# directory: bindings/ in the source tree, swig/ in an sdist.
INTERFACE = "m2mpsk.i"
INCLUDE = re.compile(r'^\s*%include\s+"([^"]+)"')
PYTHONCODE = re.compile(r'^\s*%pythoncode\s+"([^"]+)"')
CONDITION = re.compile(r"^\s*#\s*(if|ifdef|ifndef|elif|else|endif)\b(.*)")
OTHER_LANGUAGE = re.compile(r"\bSWIG(?!PYTHON\b)[A-Z]+\b")


def swig_root():
    """SWIG's include directory: swig/ in an sdist, bindings/ in the tree."""
    packed = HERE / "swig"
    if (packed / INTERFACE).is_file():
        return packed
    return HERE.parent


def swig_inputs(root):
    """What SWIG reads from root for Python: the interface, the files it
    %includes from root (the header comes from pkg-config's directories),
    and the files a `%pythoncode "file"` line inserts, in the order found.
    Branches of `#if`/`#elif` that name only another language's SWIG
    symbol (SWIGJAVA) are left out."""
    found = []

    def walk(rel):
        if rel in found:
            return
        found.append(rel)
        active = []
        for line in (root / rel).read_text(encoding="utf-8").splitlines():
            cond = CONDITION.match(line)
            if cond:
                kw, expr = cond.groups()
                other = bool(OTHER_LANGUAGE.search(expr)) and "SWIGPYTHON" not in expr
                if kw in ("if", "ifdef"):
                    active.append(not other)
                elif kw == "ifndef":
                    active.append(True)
                elif kw == "elif" and active:
                    active[-1] = not other
                elif kw == "else" and active:
                    active[-1] = True
                elif kw == "endif" and active:
                    active.pop()
                continue
            if not all(active):
                continue
            m = INCLUDE.match(line)
            if m and (root / m.group(1)).is_file():
                walk(m.group(1))
            m = PYTHONCODE.match(line)
            if m and m.group(1) not in found:
                if not (root / m.group(1)).is_file():
                    fail("%s: %%pythoncode names %s, not found under %s" % (rel, m.group(1), root))
                found.append(m.group(1))

    walk(INTERFACE)
    return found


def version():
    """The project's version: PKG-INFO in an sdist, CMakeLists.txt's
    project() in the source tree."""
    info = HERE / "PKG-INFO"
    if info.is_file():
        m = re.search(r"^Version:\s*(\S+)", info.read_text(encoding="utf-8"), re.MULTILINE)
        if m:
            return m.group(1)
    cmake = HERE.parent.parent / "CMakeLists.txt"
    if cmake.is_file():
        m = re.search(r"project\(m2mpsk\s+VERSION\s+([0-9.]+)", cmake.read_text(encoding="utf-8"))
        if m:
            return m.group(1)
    sys.exit("m2mpsk: cannot tell the version: neither PKG-INFO (an sdist) nor "
             "../../CMakeLists.txt (the source tree)")


VERSION = version()


def fail(message):
    """Stops the build with message (pip shows it, and exits non-zero)."""
    sys.stderr.write("\nm2mpsk: %s\n\n" % message)
    sys.exit(1)


def pkg_config(*args):
    exe = os.environ.get("PKG_CONFIG", "pkg-config")
    if shutil.which(exe) is None:
        fail("pkg-config not found (%s): it finds the installed libm2mpsk that the binding "
             "is built against. Install it (apt-get install pkg-config)." % exe)
    run = subprocess.run([exe, *args, PKG_CONFIG_MODULE], capture_output=True, text=True)
    if run.returncode != 0:
        fail("pkg-config cannot find the module %s (%s): install libm2mpsk first, either the "
             "Debian package libm2mpsk-dev or `cmake --install build --prefix DIR`, and for a "
             "DIR of your own set PKG_CONFIG_PATH to the directory of its m2mpsk.pc "
             "(DIR/lib/pkgconfig). pkg-config said: %s"
             % (PKG_CONFIG_MODULE, " ".join(args), run.stderr.strip() or "nothing"))
    return run.stdout.strip()


class BuildExt(build_ext):
    """Runs SWIG on m2mpsk.i, compiles its wrapper, and lays the package out."""

    def run(self):
        if self.inplace:
            fail("editable installs (pip install -e) are not supported: the package is made "
                 "at build time (SWIG's proxy becomes m2mpsk/__init__.py); use pip install, "
                 "or the CMake build tree's m2mpsk-python directory on PYTHONPATH.")
        root = swig_root()
        swig = os.environ.get("SWIG", "swig")
        if shutil.which(swig) is None:
            fail("SWIG not found (%s): the extension is generated at install time from "
                 "m2mpsk.i. Install SWIG 4 (apt-get install swig)." % swig)
        found = pkg_config("--modversion")
        if found != VERSION:
            fail("this binding is version %s, but pkg-config found libm2mpsk %s: the interface "
                 "wraps the header of its own release, so install that one (or point "
                 "PKG_CONFIG_PATH at it)." % (VERSION, found))
        cflags = shlex.split(pkg_config("--cflags"))
        libs = shlex.split(pkg_config("--libs"))

        gen = Path(self.build_temp).resolve() / "swig"
        gen.mkdir(parents=True, exist_ok=True)
        incs = [f for f in cflags if f.startswith("-I")]
        # pkg-config leaves out -I/usr/include (Debian's libm2mpsk-dev), which
        # the compiler searches anyway and SWIG does not.
        header_dir = "-I%s" % pkg_config("--variable=includedir")
        self.spawn([swig, "-python", "-doxygen", "-I%s" % root, *incs, header_dir,
                    "-outdir", str(gen), "-o", str(gen / "m2mpsk_wrap.c"), str(root / INTERFACE)])

        ext = self.extensions[0]
        ext.sources = [str(gen / "m2mpsk_wrap.c")]
        ext.include_dirs = [f[2:] for f in incs]
        ext.extra_compile_args = [f for f in cflags if not f.startswith("-I")]
        ext.library_dirs = [f[2:] for f in libs if f.startswith("-L")]
        ext.libraries = [f[2:] for f in libs if f.startswith("-l")]
        ext.extra_link_args = [f for f in libs if not f.startswith(("-L", "-l"))]
        ext.runtime_library_dirs = list(ext.library_dirs)
        super().run()

        pkg = Path(self.build_lib) / "m2mpsk"
        pkg.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gen / "m2mpsk.py", pkg / "__init__.py")
        shutil.copyfile(HERE / "m2mpsk.pyi", pkg / "__init__.pyi")
        shutil.copyfile(HERE / "py.typed", pkg / "py.typed")


class Sdist(sdist):
    """Packs the interface and what it includes under swig/, as it sits
    under bindings/ in the source tree (outside this directory)."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        root = swig_root()
        for rel in swig_inputs(root):
            dest = Path(base_dir) / "swig" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dest)


setup(
    version=VERSION,
    # Everything is laid out by BuildExt; no discovery of this directory's
    # .py files as modules.
    packages=[],
    py_modules=[],
    ext_modules=[Extension("m2mpsk._m2mpsk", sources=[])],
    cmdclass={"build_ext": BuildExt, "sdist": Sdist},
    zip_safe=False,
)
